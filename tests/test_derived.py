"""The derived answer: the model writes its target straight after the prompt, the chain shown is the exact chain of
edits from the source to it; and the training rows that teach it (``--sft.direct_targets``)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secondthought.chains.edits import Edit, EditChain, compute_edits, count_units, derived_chain, joined
from secondthought.chains.formats import FORMATS, WORDS
from secondthought.chains.text import TGT, check_completion, derived_completion, prompt
from secondthought.config import EvalConfig, ServeConfig
from tests.memorized import CORRECTION, triples

WORD = st.sampled_from(["Tom", "kicks", "the", "dog", "pets", "a", "cat,", "and", "walks", "away.", "home", "it"])
TEXT = st.lists(WORD, min_size=1, max_size=12).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(source=TEXT, target=TEXT, edit_format=st.sampled_from(list(FORMATS)))
def test_a_derived_chain_always_applies_and_gives_its_target(source, target, edit_format):
    fmt = FORMATS[edit_format]
    verdict = check_completion(source, derived_completion(source, " " + target, fmt), fmt)
    assert verdict.applies and verdict.consistent
    assert verdict.no_op == (source == target)


@settings(max_examples=300, deadline=None)
@given(source=TEXT, target=TEXT)
def test_joined_edits_give_the_same_text_and_none_touches_the_next(source, target):
    chain = compute_edits(source, target)
    one = joined(chain)
    assert one.apply(source) == chain.apply(source) and len(one) <= len(chain)
    assert all(b.pos > a.pos + count_units(a.old) for a, b in zip(one.edits, one.edits[1:]))


def test_an_insert_beside_a_delete_is_shown_as_one_replace():
    """The issue's "Tracy decides to saves the the cat": an insert next to a delete where a replace is meant."""
    source = "Tracy decides to put off the vet visit because her cat seems fine."
    chain = EditChain((Edit("ins", 3, new=" take"), Edit("del", 3, old=" put off")))
    assert joined(chain).edits == (Edit("rep", 3, old=" put off", new=" take"),)
    assert derived_chain("Kat routine in the room.", "Kat routine.").edits == (
        Edit("rep", 1, old=" routine in the room.", new=" routine."),)
    assert joined(chain).apply(source) == chain.apply(source)


def test_the_model_writes_its_target_and_the_chain_is_derived_from_it(memorized_direct):
    from secondthought.decoding.policy import Policy, SamplingParams

    context, source, target = triples(1)[0]
    policy = Policy.load(memorized_direct)
    ids = policy.tokenizer(prompt(context, source), add_special_tokens=False).input_ids
    params = SamplingParams(max_new_tokens=96, temperature=0)
    [out] = policy.complete([ids], [source], params, derive=True)
    assert out.target.strip() == target
    assert out.verdict.valid and out.verdict.consistent
    assert out.chain_text == WORDS.write(derived_chain(source, target), source)
    # what it wrote: the target alone (the prompt ended in <|tgt|>), not a chain
    [free] = policy.sample([ids + [policy.tokenizer.convert_tokens_to_ids(TGT)]], params)
    assert out.tokens == len(free)


def test_the_server_answers_derived_by_default_and_continues_corrected_edits(memorized_direct):
    from secondthought.runs import read_model_info
    from secondthought.serving.handlers import decoding_of, realign_job
    from secondthought.serving.replica import Replica
    from secondthought.serving.requests import RealignRequest, RealignResponse

    context, source, target = triples(1)[0]
    cfg = ServeConfig(model=str(memorized_direct))
    info = read_model_info(memorized_direct)
    assert decoding_of(cfg, info) == "derived" == Replica(cfg).decoding
    replica = Replica(cfg)
    plain = realign_job(RealignRequest(context=context, text=source), cfg, True, WORDS, derive=True)
    assert plain.derived and plain.prompt.endswith(TGT)
    [answer] = replica.realign([plain])
    assert answer["edits_from"] == "derived" and answer["result"] == answer["target"].strip() == target
    assert answer["valid"] and answer["consistent"]
    RealignResponse(**answer)  # what the route's response model checks
    # "Regenerate after the ticked edits": the model continues the corrected chain, constrained to the text
    job = realign_job(RealignRequest(context=context, text=source, edits=[_edit_in(source, target.replace(*CORRECTION))]),
                      cfg, True, WORDS, derive=True)
    assert not job.derived and not job.prompt.endswith(TGT)
    [continued] = replica.realign([job])
    assert continued["edits_from"] == "model" and continued["applies"]
    assert continued["result"] == target.replace(*CORRECTION)


def _edit_in(source: str, target: str):
    from secondthought.serving.requests import EditIn

    edit = compute_edits(source, target).edits[0]
    return EditIn(op=edit.op, position=edit.pos, old=edit.old, new=edit.new)


def test_a_model_without_direct_targets_is_served_constrained_and_evaluated_without_a_derived_row(memorized,
                                                                                                memorized_direct):
    from secondthought.evaluate.driver import decodings

    systems = {"plain": str(memorized), "direct": str(memorized_direct)}
    modes, served = decodings(systems, EvalConfig(), served="direct")
    assert set(modes) == {"plain", "plain (constrained)", "direct", "direct (constrained)", "direct (derived)"}
    assert served == "direct (derived)" and modes[served].derive and modes[served].constrain is None
    # the served row is there even when --eval.decoding leaves its mode out
    modes, served = decodings(systems, EvalConfig(decoding="free"), served="plain")
    assert served == "plain (constrained)" and set(modes) == {"plain", "direct", "plain (constrained)"}
    assert modes[served].constrain is not None


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_a_share_of_training_rows_has_its_chain_cut_the_same_rows_on_every_pass(share):
    from secondthought.sft.worker import _rows

    tgt = 99
    prompt_len, chain, target = [1, 2, 3], [7, 8, 9, 10], [tgt, 5, 6, 0]
    rows = [prompt_len + chain + target] * 2000

    class Shard:
        def iter_batches(self, batch_size, batch_format):
            for start in range(0, len(rows), batch_size):
                part = rows[start : start + batch_size]
                yield {"input_ids": part, "prompt_len": np.full(len(part), len(prompt_len))}

    def cut_rows(seed):
        out = list(_rows(Shard(), tgt, share, seed))
        assert all(list(r.input_ids) in (rows[0], prompt_len + target) and r.prompt_len == 3 for r in out)
        return [len(r.input_ids) < len(rows[0]) for r in out]

    first = cut_rows(seed=1)
    assert abs(np.mean(first) - share) < 0.04
    assert cut_rows(seed=1) == first  # every rank and a resumed run draw the same rows
    assert share in (0.0, 1.0) or cut_rows(seed=2) != first  # another epoch, other rows


def test_a_target_that_changes_nothing_falls_back_to_a_constrained_chain_and_free_means_a_chain_first(
        memorized_copying):
    """The model's first choice is to write its text back (the direct form): the derived answer would change nothing,
    so the row is decoded again constrained (the server answers the model's chain); free decoding starts with a
    chain, not with <|tgt|>."""
    from secondthought.decoding.constraints import Constrain
    from secondthought.decoding.policy import Policy, SamplingParams
    from secondthought.serving.handlers import realign_job
    from secondthought.serving.replica import Replica
    from secondthought.serving.requests import RealignRequest

    context, source, target = triples(1)[0]
    policy = Policy.load(memorized_copying)
    ids = policy.tokenizer(prompt(context, source), add_special_tokens=False).input_ids
    params = SamplingParams(max_new_tokens=96, temperature=0)
    tgt = policy.tokenizer.convert_tokens_to_ids(TGT)
    [raw] = policy.sample([ids], params)
    assert raw[0] == tgt  # unconstrained, the model skips its chain
    [free] = policy.complete([ids], [source], params)
    assert not free.text.startswith(TGT) and free.verdict.valid and free.target.strip() == target
    [direct] = policy.sample([ids + [tgt]], params)
    assert policy.tokenizer.decode(direct, skip_special_tokens=True).strip() == source  # it copies
    [derived] = policy.complete([ids], [source], params, derive=True)
    assert derived.verdict.valid and derived.verdict.consistent and derived.target.strip() == target
    [chain] = policy.sample([ids], params, constraints=policy.constraints([source], Constrain(force_target=True)))
    assert derived.tokens == len(direct) + len(chain)  # its cost: both decodings

    cfg = ServeConfig(model=str(memorized_copying))
    [answer] = Replica(cfg).realign([realign_job(RealignRequest(context=context, text=source), cfg, True, WORDS,
                                                 derive=True)])
    assert answer["edits_from"] == "model" and answer["valid"] and answer["result"] == target


def test_a_derived_edit_at_a_repeated_word_names_the_right_occurrence():
    """The issue's "insert "stands up for" before "does"" landed in "if he does anything", not in "he does nothing":
    a derived chain written in words singles out the occurrence it means, and reads back to the same place."""
    source = "Tom says no to Ann and Tom says no again."
    target = "Tom says no to Ann and Tom says yes again."
    chain = derived_chain(source, target)
    assert chain.edits == (Edit("rep", 8, old=" no", new=" yes"),)  # the second "no" (word 9), not word 3
    written = WORDS.write(chain, source)
    assert written == ' replace "no" after "and Tom says" with "yes"'
    assert WORDS.read(written, source) == chain and chain.apply(source) == target
