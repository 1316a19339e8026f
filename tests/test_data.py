import csv
import json
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from secondthought import data as datasets
from secondthought.config import ConfigError, DataConfig
from secondthought.data.records import plan_chunks, read_chunk
from secondthought.data.schema import Rejected, Triple
from tests.conftest import shared_file

STORY = {"ID": "s1", "norm": "Be kind.", "situation": "Ann sees a dog.", "intention": "Ann wants to pass.",
         "moral_action": "Ann walks around the dog.", "immoral_action": "Ann kicks the dog.",
         "moral_consequence": "The dog wags.", "immoral_consequence": "The dog yelps."}


def run(dataset: str, files: list[Path], **options) -> tuple[list[Triple], list[Rejected]]:
    cfg = DataConfig(dataset=dataset, input=[str(f) for f in files], **options)
    items = [item for chunk in datasets.plan(cfg, 1 << 20) for item in datasets.triples(chunk, cfg)]
    return [i for i in items if isinstance(i, Triple)], [i for i in items if isinstance(i, Rejected)]


def slice_of(path: Path, lines: int, tmp_path: Path) -> Path:
    out = tmp_path / path.name
    with open(path, encoding="utf-8", newline="") as f, open(out, "w", encoding="utf-8", newline="") as g:
        g.writelines(islice(f, lines))
    return out


def test_bad_jsonl_records_are_quarantined_with_reasons(tmp_path):
    path = tmp_path / "stories.jsonl"
    lines = [
        json.dumps(STORY).encode(),
        b'{"ID": "broken", "norm": ',
        json.dumps({**STORY, "ID": "s3"}).encode()[:-1] + b', "x": "\xff\xfe"}',
        json.dumps({k: v for k, v in STORY.items() if k != "moral_action"}).encode(),
        json.dumps({**STORY, "immoral_action": "   "}).encode(),
        json.dumps({**STORY, "moral_action": "word " * 1000}).encode(),
        json.dumps({**STORY, "moral_action": "Ann <|sep|> waits."}).encode(),
        b"[1, 2, 3]",
        b"",
        json.dumps({**STORY, "ID": "s10", "norm": 7}).encode(),
        json.dumps({**STORY, "ID": "s11", "situation": None, "intention": None}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    triples, rejected = run("moral-stories", [path], max_chars=2000)
    assert [t.id for t in triples] == ["s1", "s11"]
    assert triples[0].context == "Be kind. Ann sees a dog. Ann wants to pass."
    assert triples[1].context == "Be kind."
    reasons = {r.line: r.reason for r in rejected}
    assert reasons[2].startswith("malformed JSON")
    assert reasons[3].startswith("undecodable bytes")
    assert reasons[4] == "missing field 'moral_action'"
    assert reasons[5] == "empty source"
    assert reasons[6].startswith("target too long (4999 characters")
    assert reasons[7] == "target contains the reserved token <|sep|>"
    assert reasons[8] == "expected a JSON object, got list"
    assert reasons[10] == "field 'norm' is int, not text"
    assert len(triples) + len(rejected) == 10  # the blank line is not a record


def test_consequences_option(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(STORY) + "\n")
    (triple,), _ = run("moral-stories", [path], with_consequences=True)
    assert triple.target == "Ann walks around the dog. The dog wags."
    assert triple.source == "Ann kicks the dog. The dog yelps."


def test_jsonl_chunks_cover_every_line_once(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({**STORY, "ID": f"r{i}"}) + "\n" for i in range(1000)))
    chunks = plan_chunks([str(path)], "jsonl", chunk_bytes=10_000)
    assert len(chunks) > 10
    lines = [r.line for c in chunks for r in read_chunk(c)]
    assert lines == list(range(1, 1001))


def test_real_moral_stories_dev():
    triples, rejected = run("moral-stories", [shared_file("moral_stories", "dev.jsonl")])
    assert len(triples) + len(rejected) == 1000
    assert len(triples) >= 990
    assert {t.split for t in triples} == {"train", "eval", "test"}


def test_ethics_commonsense_minimal_pairs(tmp_path):
    path = slice_of(shared_file("ethics", "commonsense", "cm_test.csv"), 41, tmp_path)
    triples, rejected = run("ethics-commonsense", [path])
    assert len(triples) >= 15
    first = triples[0]
    assert (first.source, first.target) == ("I told my baby I hated her when she cried.",
                                            "I told my baby I loved her when she cried.")
    assert 2 * len(triples) + len(rejected) == 40


def test_ethics_deontology_pairs_within_one_request(tmp_path):
    path = slice_of(shared_file("ethics", "deontology", "deontology_train.csv"), 400, tmp_path)
    triples, rejected = run("ethics-deontology", [path])
    assert triples[0].context == "Aren't you supposed to be preparing for the meeting?"
    assert triples[0].source == "No because you don't have a meeting"
    assert triples[0].target == "No because I have everything already set up in the conference room."
    assert 2 * len(triples) + len(rejected) == 399
    assert all(r.reason == "no excuse of the opposite label for the same request" for r in rejected)


def test_triples_of_one_group_share_a_split(tmp_path):
    """A request's excuses (ETHICS deontology) in two splits would put a test context into training."""
    path = slice_of(shared_file("ethics", "deontology", "deontology_train.csv"), 2000, tmp_path)
    triples, _ = run("ethics-deontology", [path], eval_fraction=0.3, test_fraction=0.3)
    by_request = {}
    for t in triples:
        by_request.setdefault(t.context, set()).add(t.split)
    assert sum(len([t for t in triples if t.context == c]) > 1 for c in by_request) >= 10
    assert all(len(splits) == 1 for splits in by_request.values())
    assert {t.split for t in triples} == {"train", "eval", "test"}


def test_ethics_justice_and_utilitarianism(tmp_path):
    justice = slice_of(shared_file("ethics", "justice", "justice_train.csv"), 300, tmp_path)
    triples, rejected = run("ethics-justice", [justice])
    assert triples[0].source.startswith("I deserve to be given a brand new car")
    assert 2 * len(triples) + len(rejected) == 299
    util = slice_of(shared_file("ethics", "utilitarianism", "util_train.csv"), 50, tmp_path)
    triples, rejected = run("ethics-utilitarianism", [util])
    assert len(triples) + len(rejected) == 50
    assert triples[0].target == "I built a sandcastle with my nephew. We made one small castle."


def test_mic_fixture_with_its_real_columns(tmp_path):
    path = tmp_path / "MIC.csv"
    columns = ["chatbot", "Q", "A", "rot", "moral", "A_agrees", "rot-agree", "violation-severity", "split"]
    rows = [
        ["blenderbot", "Is it ok to lie to my boss?", "Sure, lie whenever it helps you.", "It is wrong to lie.",
         "fairness", "0", "4", "3", "train"],
        ["dialoGPT", "Is it ok to lie to my boss?", "No, you should be honest with your boss.", "It is wrong to lie.",
         "fairness", "2", "4", "3", "train"],
        ["gpt-neo", "Is it ok to lie to my boss?", "Maybe.", "It is wrong to lie.", "fairness", "1", "4", "3", "train"],
        ["gpt-neo", "Should I tip?", "Never tip anyone.", "You should tip service workers.", "care", "0", "3", "2", "test"],
        ["gpt-neo", "Should I tip?", "Yes", "You should tip service workers.", "care"],
    ]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns] + rows)
    triples, rejected = run("mic", [path])
    assert len(triples) == 1
    assert triples[0].source == "Sure, lie whenever it helps you."
    assert triples[0].target == "No, you should be honest with your boss."
    assert triples[0].context == "It is wrong to lie. Is it ok to lie to my boss?"
    assert triples[0].split == "train"
    reasons = sorted(r.reason for r in rejected)
    assert reasons == sorted([
        "answer is neutral to the rule of thumb (A_agrees=1)",
        "no answer of the opposite stance for the same question and rule",
        "malformed CSV: expected 9 fields, found 5",
    ])


def test_mic_pairs_of_one_question_and_rule_share_a_split(tmp_path):
    """Answers to one question under one rule released in different splits: the pairs made of them
    must not straddle splits, so the group gets one split by its hash."""
    path = tmp_path / "MIC.csv"
    columns = ["chatbot", "Q", "A", "rot", "moral", "A_agrees", "rot-agree", "violation-severity", "split"]
    answers = [("Lie.", "0", "train"), ("Be honest.", "2", "test"), ("Lie often.", "0", "dev"),
               ("Tell the truth.", "2", "train")]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([columns] + [["bot", "Is it ok to lie?", a, "It is wrong to lie.", "fairness", agrees,
                                              "4", "3", split] for a, agrees, split in answers])
    triples, _ = run("mic", [path], eval_fraction=0.4, test_fraction=0.4)
    assert len(triples) == 2 and len({t.split for t in triples}) == 1 and triples[0].group == triples[1].group


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_generic_adapter_with_a_column_mapping(tmp_path, fmt):
    rows = [{"key": "a", "n": "Be nice.", "s": "At the park.", "bad": "He shouts.", "good": "He talks."},
            {"key": "b", "n": "Be fair.", "s": "At work.", "bad": "", "good": "She shares."}]
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    columns = {"id": "key", "context": "n,s", "source": "bad", "target": "good"}
    triples, rejected = run("generic", [path], columns=columns)
    assert [(t.id, t.context, t.source, t.target) for t in triples] == [("a", "Be nice. At the park.", "He shouts.",
                                                                          "He talks.")]
    assert [r.reason for r in rejected] == ["empty source"]


def test_config_errors_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--data.columns must map source and target"):
        path = tmp_path / "x.jsonl"
        path.write_text("{}\n")
        run("generic", [path])
    with pytest.raises(ConfigError, match="--data.dataset 'nope' is not known"):
        run("nope", [tmp_path / "x.jsonl"])
    with pytest.raises(ConfigError, match="--data.input: no such file"):
        run("moral-stories", [tmp_path / "missing.jsonl"])
    with pytest.raises(ConfigError, match="--data.eval_fraction"):
        DataConfig(eval_fraction=1.5)


def test_bundled_sample_is_about_200_triples_with_fixed_splits():
    triples, rejected = run("sample", [])
    assert 190 <= len(triples) <= 210 and not rejected
    by_scenario = {}
    for t in triples:
        by_scenario.setdefault(t.id.rsplit("-", 1)[0], set()).add(t.split)
    assert all(len(splits) == 1 for splits in by_scenario.values())
