"""The Serve application for real: Ray Serve on loopback (a free port), a real model folder, real HTTP, the
openai client, and the page in headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from tests.memorized import CORRECTION, triples
from tests.serving import post

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def example():
    context, source, target = triples(1)[0]
    return context, source, target


def test_realign_writes_edits_that_apply_and_give_its_target(server, example):
    url, _ = server
    context, source, target = example
    r = post(url, "/v1/realign", {"context": context, "text": source})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == target and body["target"] == target
    assert body["applies"] and body["consistent"] and body["valid"] and body["edits_from"] == "model"
    assert [e["op"] for e in body["edits"]] == ["ins", "rep"]
    assert body["edits"][0]["line"].startswith('insert "waits her turn and"')
    assert body["usage"]["completion_tokens"] > 0 and body["model"] == "secondthought-sft"


def test_a_corrected_prefix_is_kept_and_the_model_writes_the_rest(server, example):
    url, _ = server
    context, source, target = example
    first = post(url, "/v1/realign", {"context": context, "text": source}).json()["edits"]
    # the user changes the first edit, sending it back as the response gave it but for its new text
    corrected = dict(first[0], new=CORRECTION[1])
    body = post(url, "/v1/realign", {"context": context, "text": source, "edits": [corrected]}).json()
    assert body["edits"][0]["new"] == " " + CORRECTION[1]
    assert body["edits"][1] == first[1]  # the rest, written by the model after the correction
    assert body["result"] == body["target"] == target.replace(*CORRECTION) and body["consistent"]


def test_apply_unticked_changed_and_added_edits(server, example):
    url, _ = server
    _, source, _ = example
    r = post(url, "/v1/edits/apply", {"text": source, "edits": [
        {"op": "rep", "position": 1, "old": "shoves", "new": "asks"},
        {"op": "del", "position": 2, "old": "past the people in front and asks for bread first."},
        {"op": "ins", "position": 12, "new": "politely."}]})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == "Maya asks politely."
    r = post(url, "/v1/edits/apply", {"text": source, "chain": "<|del|> 1 shoves"})
    assert r.json()["result"] == source.replace(" shoves", "")


@pytest.mark.parametrize("path, body, param, words", [
    ("/v1/edits/apply", {"text": "Tom kicks the dog.", "edits": [{"op": "rep", "position": 1, "old": "hits",
                                                                   "new": "pets"}]},
     "edits", "expects 'hits' but the source has 'kicks' there"),
    ("/v1/edits/apply", {"text": "Tom kicks the dog.", "edits": [{"op": "del", "position": 9, "old": "x"}]},
     "edits", "past the end"),
    ("/v1/edits/apply", {"text": "Tom kicks.", "chain": "<|rep|> 1 kicks"}, "chain", "no <|with|> part"),
    ("/v1/edits/apply", {"text": "Tom kicks."}, "body", "give edits"),
    ("/v1/edits/apply", {"text": "Tom kicks.", "edits": [{"op": "swap", "position": 0}]}, "edits.0.op", "'ins'"),
    ("/v1/edits/apply", {"text": "Tom.", "edits": [{"op": "ins", "position": 0, "new": "<|del|> 0 x"}]},
     "edits.0.new", "holds <|del|>, a token reserved"),  # refused before anything is built, naming the field
    ("/v1/realign", {"context": "c"}, "text", "Field required"),
    ("/v1/realign", {"text": ""}, "text", "at least 1 character"),
    ("/v1/realign", {"text": 42}, "text", "valid string"),
    ("/v1/realign", {"text": "x" * 2001}, "text", "more than the 2000"),
    ("/v1/realign", {"text": "Tom kicks.", "generation": {"max_tokens": 100000}}, "max_tokens", "more than the 256"),
    ("/v1/realign", {"text": "Tom kicks.", "generation": {"temperature": -1}}, "generation.temperature",
     "greater than or equal to 0"),
    ("/v1/realign", {"text": "Tom kicks.", "temprature": 1}, "temprature", "Extra inputs"),
    ("/v1/realign", {"text": "Tom kicks.", "edits": [{"op": "del", "position": 3, "old": "dog"}]}, "edits",
     "past the end"),
    ("/v1/completions", {"prompt": "x", "n": 3}, "n", "less than or equal to 1"),
    ("/v1/completions", {"prompt": ["x"] * 17}, "body", "1 to 16 prompts"),
])
def test_bad_input_is_a_4xx_naming_the_field_and_the_server_stays_up(server, path, body, param, words):
    url, _ = server
    r = post(url, path, body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert requests.get(url + "/healthz", timeout=10).json()["status"] == "ok"


def test_not_json_and_a_prompt_too_long_for_the_model(server):
    url, _ = server
    r = requests.post(url + "/v1/realign", data=b"{not json", headers={"Content-Type": "application/json"},
                      timeout=30)
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    r = post(url, "/v1/completions", {"prompt": "a " * 3900, "max_tokens": 200})
    assert r.status_code == 422 and "context of 2048 tokens" in r.json()["error"]["message"], r.text


def test_the_openai_client_lists_completes_and_streams(server, example):
    from openai import OpenAI

    from secondthought.chains.text import prompt

    url, _ = server
    context, source, target = example
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    models = client.models.list()
    assert [m.id for m in models.data] == ["secondthought-sft"]
    text = prompt(context, source)
    done = client.completions.create(model="secondthought-sft", prompt=text, max_tokens=100, temperature=0)
    assert done.choices[0].text.endswith("<|tgt|>" + target) and done.choices[0].finish_reason == "stop"
    assert done.usage.completion_tokens > 0
    cut = client.completions.create(model="secondthought-sft", prompt=text, max_tokens=100, temperature=0,
                                    stop=["<|tgt|>"])
    assert "<|tgt|>" not in cut.choices[0].text and cut.choices[0].text == done.choices[0].text.split("<|tgt|>")[0]
    chunks = list(client.completions.create(model="secondthought-sft", prompt=text, max_tokens=100, temperature=0,
                                            stream=True))
    assert len(chunks) > 5  # token by token, not one block
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"
    short = client.completions.create(model="secondthought-sft", prompt=text, max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    with pytest.raises(Exception, match="serves 'secondthought-sft'"):
        client.completions.create(model="gpt-4", prompt="hello", max_tokens=3)


def test_the_stream_ends_with_done(server):
    url, _ = server
    with requests.post(url + "/v1/completions", json={"prompt": "Be kind.", "max_tokens": 4, "stream": True},
                       stream=True, timeout=60) as r:
        events = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_page_realigns_unticks_an_edit_and_reapplies(server, example):
    from playwright.sync_api import sync_playwright

    url, _ = server
    context, source, target = example
    ARTIFACTS.mkdir(exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url + "/")
            page.fill("#context", context)
            page.fill("#text", source)
            page.click("#realign")
            page.wait_for_selector("#edits tr.edit-row")
            assert page.locator("#edits tr.edit-row").count() == 2
            assert page.input_value("#result") == target
            assert page.locator("#diff ins").count() == 2 and page.locator("#diff del").count() == 1
            page.locator("#edits tr.edit-row").nth(0).locator("input.keep").uncheck()  # untick the insertion
            page.click("#apply")
            expected = source.split(" shoves")[0] + " calls work to say she may be a few minutes late."
            page.wait_for_function("want => document.querySelector('#result').value === want", arg=expected)
            assert "Applied 1 edit" in page.text_content("#status")
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_page_reapplies_edits_in_a_text_with_a_newline_and_two_spaces(server):
    """The page shows an edit without the whitespace before its words and the server put one space back: an edit
    after a newline or two spaces could not be re-applied (a 422 on valid input). Typed, re-applied, re-applied."""
    from playwright.sync_api import sync_playwright

    url, _ = server
    text = "Tom  kicks\nthe dog."
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.fill("#text", text)
            page.click("#add")
            row = page.locator("#edits tr.edit-row").nth(0)
            row.locator("select.op").select_option("rep")
            row.locator("input.position").fill("2")
            row.locator("input.old").fill("kicks")
            row.locator("input.new").fill("pets")
            page.click("#add")
            row = page.locator("#edits tr.edit-row").nth(1)
            row.locator("select.op").select_option("del")
            row.locator("input.position").fill("3")
            row.locator("input.old").fill("the")
            for _ in range(2):
                page.click("#apply")
                page.wait_for_function("want => document.querySelector('#result').value === want",
                                       arg="Tom  pets dog.", timeout=30_000)
                assert "Applied 2 edit" in page.text_content("#status")
        finally:
            browser.close()


def test_health_and_the_yaml_the_server_runs_on(server):
    from ray import serve

    url, _ = server
    assert requests.get(url + "/healthz", timeout=10).json() == {"status": "ok", "model": "secondthought-sft"}
    assert requests.get(url + "/-/healthz", timeout=10).status_code == 200  # Serve's proxy
    status = serve.status().applications["secondthought"]
    assert status.status == "RUNNING"
    assert set(status.deployments) == {"Api", "Realigner"}
    assert "/v1/realign" in requests.get(url + "/openapi.json", timeout=10).json()["paths"]


def test_a_bad_request_among_good_ones_fails_alone(server, example):
    """Sent together, five good requests and bad ones (a lone surrogate in the context, a reserved token in the
    text, a body over the server's limit): the bad ones get their 4xx naming the field, the good ones 200."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = server
    context, source, target = example
    good = {"context": context, "text": source}
    raw = '{"context": "\\ud800", "text": "%s"}' % source  # valid JSON, no valid Unicode

    def send(kind: str):
        if kind == "surrogate":
            return requests.post(url + "/v1/realign", data=raw.encode(), timeout=120,
                                 headers={"Content-Type": "application/json"})
        if kind == "marker":
            return post(url, "/v1/realign", {"context": context, "text": source + "<|tgt|>" + target})
        if kind == "huge":
            return post(url, "/v1/realign", {"context": "x" * (2 << 20), "text": source})
        return post(url, "/v1/realign", good)

    kinds = ["good", "surrogate", "good", "marker", "good", "huge", "good", "good"]
    with ThreadPoolExecutor(len(kinds)) as pool:
        answers = list(pool.map(send, kinds))
    for k, kind in enumerate(kinds):
        r = answers[k]
        if kind == "good":
            assert r.status_code == 200 and r.json()["result"] == target, r.text
        else:
            error = r.json()["error"]
            assert (r.status_code, error["param"]) == {"surrogate": (422, "context"), "marker": (422, "text"),
                                                       "huge": (413, "body")}[kind], r.text


def test_an_error_inside_a_stream_is_an_error_event_then_done(server):
    url, _ = server
    with requests.post(url + "/v1/completions", json={"prompt": "a " * 3900, "max_tokens": 200, "stream": True},
                       stream=True, timeout=60) as r:
        events = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "data: [DONE]" and len(events) == 2, events
    assert "context of 2048 tokens" in events[0] and '"error"' in events[0]
