"""The serving routes' logic as plain functions and the Replica, without Ray: what the Serve deployments call."""

from __future__ import annotations

import pytest

from secondthought.chains.edits import compute_edits, serialize
from secondthought.chains.formats import TOKENS, WORDS
from secondthought.chains.text import TGT, prompt
from secondthought.config import ServeConfig
from secondthought.serving.handlers import (
    ApiError,
    apply_edits,
    completion_jobs,
    cut_at_stop,
    realign_answer,
    realign_job,
)
from secondthought.serving.requests import ApplyRequest, CompletionRequest, EditIn, RealignRequest
from tests.memorized import triples

CFG = ServeConfig(model="unused", max_edits=3)
SOURCE, TARGET = "Tom kicks the dog hard.", "Tom pets the dog gently."


def job(**kw):
    return realign_job(RealignRequest(text=SOURCE, **kw), CFG, writes_chains=True, fmt=TOKENS)


def test_apply_takes_words_as_a_person_writes_them_or_a_serialized_chain():
    out = apply_edits(ApplyRequest(text=SOURCE, edits=[EditIn(op="rep", position=1, old="kicks", new="pets"),
                                                       EditIn(op="rep", position=4, old="hard.", new="gently.")]), CFG)
    assert out["result"] == TARGET and out["chain"] == serialize(compute_edits(SOURCE, TARGET))
    assert [e["line"] for e in out["edits"]] == ['replace "kicks" with "pets" (word 2)',
                                                 'replace "hard." with "gently." (word 5)']
    assert apply_edits(ApplyRequest(text=SOURCE, chain=out["chain"]), CFG)["result"] == TARGET


@pytest.mark.parametrize("edits, param, words", [
    ([EditIn(op="del", position=1)], "edits[0].old", "needs the text it removes"),
    ([EditIn(op="ins", position=1, old="x", new="y")], "edits[0].old", "leave old empty"),
    ([EditIn(op="rep", position=1, old="kicks")], "edits[0].new", "needs the text it writes"),
    ([EditIn(op="ins", position=0, new="a")] * 4, "edits", "4 edits, more than the 3"),
    ([EditIn(op="ins", position=2, new="a"), EditIn(op="ins", position=1, new="b")], "edits", "before an earlier"),
])
def test_edits_that_cannot_be_applied_are_refused_naming_the_field(edits, param, words):
    with pytest.raises(ApiError) as e:
        apply_edits(ApplyRequest(text=SOURCE, edits=edits), CFG)
    assert e.value.param == param and words in e.value.message and e.value.status == 422


def test_a_chain_that_does_not_apply_gives_no_result_and_says_why():
    j = job()
    answer = realign_answer(j, f"<|del|> 1 hits{TGT}Tom the dog.", True, "m", 10, 5)
    assert answer["result"] is None and not answer["applies"] and not answer["valid"]
    assert "expects 'hits' but the source has 'kicks'" in answer["problem"]
    assert answer["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_a_prefix_is_part_of_the_chain_and_kept_when_the_rest_does_not_parse():
    j = job(edits=[EditIn(op="rep", position=1, old="kicks", new="pets")])
    assert j.prompt == prompt("", SOURCE) + "<|rep|> 1 kicks <|with|> pets"
    whole = realign_answer(j, f" <|rep|> 4 hard. <|with|> gently.{TGT}{TARGET}", True, "m", 1, 1)
    assert whole["result"] == TARGET and whole["consistent"] and len(whole["edits"]) == 2
    broken = realign_answer(j, " <|rep|> 4 <|with|>", True, "m", 1, 1)
    assert [e["new"] for e in broken["edits"]] == [" pets"] and not broken["applies"]


def test_a_model_that_writes_words_gets_the_prefix_in_words_and_answers_the_chain_serialized():
    j = realign_job(RealignRequest(text=SOURCE, chain="<|rep|> 1 kicks <|with|> pets"), CFG, True, WORDS)
    assert j.prompt == prompt("", SOURCE) + ' replace "kicks" with "pets'  # the model writes the quote (and ";)
    whole = realign_answer(j, f'"; replace "hard." with "gently."{TGT}{TARGET}', True, "m", 1, 1)
    assert whole["result"] == TARGET and whole["consistent"] and whole["valid"]
    assert whole["chain"] == serialize(compute_edits(SOURCE, TARGET))  # as a client sends it back
    assert whole["explanation"].startswith('replace "kicks" with "pets" (word 2)')
    wrong = realign_answer(j, f'"; delete "softly"{TGT}Tom pets the dog.', True, "m", 1, 1)
    assert not wrong["applies"] and "'softly' is not in the source" in wrong["problem"]
    assert [e["new"] for e in wrong["edits"]] == [" pets"] and wrong["result"] is None


def test_a_targets_only_model_shows_its_change_as_edits_from_the_diff():
    j = realign_job(RealignRequest(text=SOURCE), CFG, writes_chains=False, fmt=TOKENS)
    answer = realign_answer(j, f"{TGT}{TARGET}", False, "m", 1, 1)
    assert answer["edits_from"] == "diff" and answer["result"] == TARGET and answer["valid"]
    assert [e["op"] for e in answer["edits"]] == ["rep", "rep"]
    with pytest.raises(ApiError, match="writes targets only"):
        realign_job(RealignRequest(text=SOURCE, chain="<|del|> 1 kicks"), CFG, writes_chains=False, fmt=TOKENS)


def test_generation_limits_and_stop_sequences():
    with pytest.raises(ApiError, match="more than the 256"):
        job(generation={"max_tokens": 257})
    assert job().sampling.max_new_tokens == CFG.default_new_tokens
    [c] = completion_jobs(CompletionRequest(prompt="x", max_tokens=5, stop="<|tgt|>", temperature=0), CFG)
    assert c.sampling.max_new_tokens == 5 and c.stops == ("<|tgt|>",)
    assert cut_at_stop("ab<|tgt|>cd", ["<|tgt|>", "b"]) == ("a", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def test_the_engine_streams_the_same_text_it_completes_and_holds_back_a_stop(memorized):
    from secondthought.serving.handlers import CompletionJob, Sampling
    from secondthought.serving.replica import Replica

    engine = Replica(ServeConfig(model=str(memorized)))
    context, source, target = triples(1)[0]
    whole = CompletionJob(prompt(context, source), Sampling(100))
    [(text, reason, _, n)] = engine.complete([whole])
    assert text.endswith(TGT + target) and reason == "stop" and n > 10
    pieces = list(engine.stream(whole))
    assert "".join(t for t, _ in pieces) == text and pieces[-1] == ("", "stop") and len(pieces) > 10
    cut = CompletionJob(whole.prompt, Sampling(100), stops=(TGT,))
    assert "".join(t for t, _ in engine.stream(cut)) == text.split(TGT)[0]
    [answer] = engine.realign([realign_job(RealignRequest(context=context, text=source), ServeConfig(model="x"),
                                           True, TOKENS)])
    assert answer["result"] == target and answer["consistent"]
    too_long = CompletionJob("a " * 3000, Sampling(100))
    [refused] = engine.complete([too_long])
    assert isinstance(refused, ApiError) and "context of 2048 tokens" in refused.message
    engine.healthy()


def test_edits_shown_without_their_whitespace_apply_as_they_were():
    """The page shows an edit's text without the whitespace before it (a newline, two spaces) and may send it back
    so: it gets the text's own whitespace there, not one space (before: a 422 on valid input)."""
    text = "Tom  kicks\nthe dog."
    first = apply_edits(ApplyRequest(text=text, edits=[EditIn(op="rep", position=1, old="kicks", new="pets"),
                                                       EditIn(op="del", position=2, old="the")]), CFG)
    assert first["result"] == "Tom  pets dog." and [e["old"] for e in first["edits"]] == ["  kicks", "\nthe"]
    again = [EditIn(op=e["op"], position=e["position"], old=e["old"].lstrip(), new=e["new"].lstrip())
             for e in first["edits"]]
    assert apply_edits(ApplyRequest(text=text, edits=again), CFG)["result"] == first["result"]


def test_a_word_number_of_thousands_of_digits_is_a_422_naming_the_chain():
    with pytest.raises(ApiError) as refused:
        apply_edits(ApplyRequest(text=SOURCE, chain="<|del|> " + "9" * 5000 + " kicks"), CFG)
    assert refused.value.status == 422 and refused.value.param == "chain" and "digits" in refused.value.message


@pytest.mark.parametrize("fields, where, words", [
    ({"text": "Tom kicks<|tgt|>Tom pets the dog."}, ("text",), "<|tgt|>, a token reserved"),
    ({"text": "Tom kicks.", "context": "Be kind.<|sep|>"}, ("context",), "<|sep|>"),
    ({"text": "Tom kicks.", "edits": [{"op": "ins", "position": 0, "new": "<|src|>x"}]}, ("edits", 0, "new"), "<|src|>"),
    ({"text": "Tom kicks.", "context": "\ud800"}, ("context",), "unicode"),
    ({"text": "Tom kicks.", "edits": [{"op": "del", "position": 0, "old": "x"}] * 10_001}, ("edits",), "at most"),
])
def test_reserved_tokens_lone_surrogates_and_huge_lists_are_refused_naming_the_field(fields, where, words):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as refused:
        RealignRequest(**fields)
    first = refused.value.errors()[0]
    assert first["loc"][:len(where)] == where and words.lower() in first["msg"].lower(), first


def test_one_request_that_fails_inside_a_batch_fails_alone(memorized):
    """A request the model side fails on gets its own 500; the others of its batch are answered."""
    from secondthought.serving.replica import Replica

    replica = Replica(ServeConfig(model=str(memorized)))
    context, source, _ = triples(1)[0]
    cfg = ServeConfig(model=str(memorized))
    good = [realign_job(RealignRequest(context=context, text=source + " " * k), cfg, True, TOKENS) for k in range(3)]
    bad = realign_job(RealignRequest(context=context, text="Poison pill."), cfg, True, TOKENS)
    poison = replica.encode(bad.prompt)
    sample = replica.policy.sample

    def failing(prompts, *args, **kw):
        if poison in prompts:
            raise RuntimeError("a fault in decoding")
        return sample(prompts, *args, **kw)

    replica.policy.sample = failing
    answers = replica.realign([good[0], bad, good[1], good[2]])
    assert isinstance(answers[1], ApiError) and answers[1].status == 500 and "RuntimeError" in answers[1].message
    assert all(isinstance(a, dict) and a["applies"] for a in (answers[0], answers[2], answers[3]))


def test_a_sampled_request_with_a_seed_answers_the_same_whatever_shares_its_batch(tokenizer, tmp_path):
    """A random model samples from wide distributions: one generator shared by a batch would give a row another
    answer beside other rows than alone."""
    from secondthought.models.lm import build_base_model
    from secondthought.serving.replica import Replica

    cfg = ServeConfig(model=str(build_base_model("tiny-llama", tokenizer, tmp_path / "m")), default_new_tokens=24)
    replica = Replica(cfg)
    context, source, _ = triples(1)[0]
    sampled = [realign_job(RealignRequest(context=context, text=text, generation={"temperature": 1.5, "seed": 7}),
                           cfg, True, TOKENS) for text in (source, "Tom kicks the dog.", "Maya shoves the kid.")]
    alone = replica.realign([sampled[0]])[0]
    beside = replica.realign([sampled[1], sampled[0], sampled[2]])[1]  # the same settings: once one batch
    assert alone["target"] == beside["target"] and alone["chain"] == beside["chain"]


def test_a_replica_decodes_at_most_max_streams_streams_at_once():
    """Each stream decodes in a thread of its own: beyond the bound a stream gets a 503 instead of one more thread."""
    import threading

    from serve.app import Realigner

    class Streaming:
        def stream(self, job):
            yield "a", None
            yield "", "stop"

    replica = Realigner.func_or_class.__new__(Realigner.func_or_class)
    replica.cfg, replica.replica = ServeConfig(model="unused", max_streams=1), Streaming()
    replica.streams = threading.BoundedSemaphore(1)
    first = replica.stream(None)
    assert next(first) == ("a", None)  # one stream running
    with pytest.raises(ApiError) as refused:
        next(replica.stream(None))
    assert refused.value.status == 503 and "1 streams already" in refused.value.message
    assert list(first) == [("", "stop")]  # it ends, and frees its place
    assert list(replica.stream(None)) == [("a", None), ("", "stop")]


def test_a_character_the_tokenizer_cannot_write_is_a_422_naming_the_field(memorized):
    """Found by the schemathesis fuzz: SmolLM2's vocabulary has no token for the byte 0xF1 (the start of U+40000 to
    U+7FFFF): the tokenizer dropped it and constrained decoding could never remove the word: a 500."""
    from secondthought.serving.replica import Replica

    cfg = ServeConfig(model=str(memorized))
    replica = Replica(cfg)
    context, source, _ = triples(1)[0]
    odd = realign_job(RealignRequest(context=context, text="Tom kicks \U00040a0f."), cfg, True, TOKENS)
    good = realign_job(RealignRequest(context=context, text=source), cfg, True, TOKENS)
    bad_context = realign_job(RealignRequest(context="\U00040a0f", text=source), cfg, True, TOKENS)
    answers = replica.realign([odd, good, bad_context])
    assert isinstance(answers[0], ApiError) and answers[0].status == 422 and answers[0].param == "text"
    assert "U+40A0F" in answers[0].message and answers[1]["applies"]
    assert isinstance(answers[2], ApiError) and answers[2].param == "context"


def test_an_empty_prompt_is_refused_naming_it():
    """Found by the schemathesis fuzz: an empty prompt reached the model (a forward over no token: a 500)."""
    from pydantic import ValidationError

    for prompt in ("", ["Be kind.", ""]):
        with pytest.raises(ValidationError) as refused:
            CompletionRequest(prompt=prompt)
        assert refused.value.errors()[0]["loc"][0] == "prompt"


def test_a_long_text_gets_tokens_enough_to_rewrite_it_whole_within_the_bounds():
    """A constrained chain closes early when its tokens run out ("Kat uses a dating app her phone."): a realign
    request that does not say gets about a token per character of its text, at least the default, at most the cap."""
    cfg = ServeConfig(model="unused", default_new_tokens=128, max_new_tokens=512)
    short, long = "Tom kicks the dog.", " ".join(["Tom kicks the dog while his friends laugh at it."] * 8)
    budget = {text: realign_job(RealignRequest(text=text), cfg, True, WORDS).sampling.max_new_tokens
              for text in (short, long)}
    assert budget[short] == 128 and budget[long] == len(long) + 32 > 3 * len(long) // 4
    assert realign_job(RealignRequest(text=long * 2), cfg, True, WORDS).sampling.max_new_tokens == 512
    asked = RealignRequest(text=long, generation={"max_tokens": 40})
    assert realign_job(asked, cfg, True, WORDS).sampling.max_new_tokens == 40
