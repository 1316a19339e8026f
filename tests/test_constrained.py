"""Decoding constrained to the source: the gold completion of every pair is allowed token by token, anything a
walk through the allowed tokens writes is a chain that applies (and changes the source), and a model decoded
under the constraint writes only allowed tokens."""

import json
import random

import numpy as np
import pytest
import torch

from secondthought.chains.edits import compute_edits
from secondthought.chains.formats import FORMATS, WORDS
from secondthought.chains.text import TGT, check_completion, completion, prompt
from secondthought.decoding.constraints import ChainGrammar, Constrain
from secondthought.decoding.policy import Policy, SamplingParams, completion_text
from secondthought.decoding.tokens_grammar import TokensConstraint
from tests.conftest import shared_file
from tests.memorized import CORRECTION, first_edit, triples


@pytest.fixture(params=list(FORMATS))
def memorized_any(request):
    """The memorized model, once per edit format."""
    return request.getfixturevalue("memorized" if request.param == "tokens" else "memorized_words"), request.param


@pytest.fixture(scope="module")
def grammar(tokenizer):
    return ChainGrammar(tokenizer)


def gold_is_allowed(grammar, tokenizer, source: str, target: str, force_target: bool, edit_format: str = "tokens",
                    costs=(1, 1, 1)) -> bool:
    constraint = grammar.constraints([source], Constrain(force_target), FORMATS[edit_format])[0]
    chain = FORMATS[edit_format].write(compute_edits(source, target, costs), source)
    ids = tokenizer(completion(chain, target), add_special_tokens=False).input_ids
    for token in ids + [tokenizer.eos_token_id]:
        if not constraint.mask(grammar.table.size)[token]:
            return False
        constraint.advance(token)
    return True


@pytest.mark.parametrize("edit_format", list(FORMATS))
def test_every_sample_pairs_gold_completion_is_allowed_token_by_token(grammar, tokenizer, edit_format):
    pairs = [(source, target) for _, source, target in triples(200)]
    assert len(pairs) >= 50
    for source, target in pairs + [("He said \"no\" (twice).\n\nThe end", "He said: \"yes!\"\n The end.")]:
        for force_target in (True, False):
            assert gold_is_allowed(grammar, tokenizer, source, target, force_target, edit_format), (source, target)


@pytest.mark.parametrize("edit_format", list(FORMATS))
def test_every_moral_stories_pairs_gold_completion_is_allowed(grammar, tokenizer, edit_format):
    rows = [json.loads(line) for name in ("train.jsonl", "dev.jsonl")
            for line in shared_file("moral_stories", name).read_text().splitlines()]
    step = 1 if edit_format == "tokens" else 3  # words: every third row (a minute for all of them)
    for k, r in enumerate(rows[::step]):
        costs = [(1, 1, 1), (1, 1, 2)][k % 2]
        assert gold_is_allowed(grammar, tokenizer, r["immoral_action"], r["moral_action"], True, edit_format,
                               costs), r["ID"]


def walk(grammar, tokenizer, source: str, force_target: bool, rng: random.Random, steps: int = 400,
         budget: bool = False, favour: float = 0.3, edit_format: str = "tokens", odd: float = 0.0) -> str | None:
    """A random completion through the allowed tokens, special tokens (and, in words, quotes) favoured so that
    free text ends, and with probability ``odd`` a token with bytes beyond ASCII (half characters and bytes that
    are no UTF-8, as an untrained model writes); with ``budget`` the constraint is told how many of the
    ``steps`` are left (as decoding does), and forced text is written in long tokens, as a model does (not byte
    by byte)."""
    constraint = grammar.constraints([source], Constrain(force_target), FORMATS[edit_format])[0]
    ids = []
    special = set(grammar.table.special.values()) | {tokenizer.eos_token_id}
    quotes = {i for i in grammar.table.escaping if b'"' in grammar.table.bytes_of[i]} if edit_format == "words" else set()
    for step in range(steps):
        allowed = constraint.mask(grammar.table.size, steps - step if budget else None).nonzero().squeeze(-1).tolist()
        assert allowed, f"no token allowed after {completion_text(tokenizer, ids)!r}"
        ends = [t for t in allowed if t in special] or [t for t in allowed if t in quotes]
        beyond_ascii = [t for t in allowed if max(grammar.table.bytes_of[t] or b"\0") >= 0x80]
        chance = rng.random()
        token = (rng.choice(beyond_ascii) if beyond_ascii and chance < odd
                 else rng.choice(ends) if ends and chance < odd + favour else rng.choice(allowed))
        if budget and len(allowed) < 100 and token not in special:  # forced text: its longest token
            token = max(allowed, key=lambda t: len(grammar.table.bytes_of[t] or b""))
        constraint.advance(token)
        if token == tokenizer.eos_token_id:
            return completion_text(tokenizer, ids)
        ids.append(token)
    return None


@pytest.mark.parametrize("edit_format", list(FORMATS))
@pytest.mark.parametrize("force_target", [True, False])
def test_whatever_the_constraint_allows_is_a_chain_that_applies_and_changes_the_source(grammar, tokenizer, force_target,
                                                                                       edit_format):
    rng = random.Random(0)
    sources = [s for _, s, _ in triples(12)] + ["Go.", "a a a a", "He said  twice\n\nand left. ", 'A "b" \\ c "b".']
    finished = 0
    for source in sources:
        for _ in range(4):
            text = walk(grammar, tokenizer, source, force_target, rng, edit_format=edit_format)
            if text is None:
                continue
            finished += 1
            verdict = check_completion(source, text, FORMATS[edit_format])
            assert verdict.applies and verdict.valid, (source, text, verdict.reason)
            assert verdict.consistent or not force_target, (source, text)
    assert finished >= 40


@pytest.mark.parametrize("edit_format", list(FORMATS))
@pytest.mark.parametrize("force_target", [True, False])
def test_told_the_tokens_left_a_row_closes_its_chain_in_time(grammar, tokenizer, force_target, edit_format):
    """A walk that rarely ends free text by itself, with a budget of 60 tokens: every row still writes a target
    (forced: the whole of it) and ends with a valid chain; without the budget some are cut before they end."""
    rng = random.Random(1)
    sources = [s for _, s, _ in triples(10)]
    with_budget = [walk(grammar, tokenizer, s, force_target, rng, steps=60, budget=True, favour=0.02,
                        edit_format=edit_format) for s in sources]
    without = [walk(grammar, tokenizer, s, force_target, rng, steps=60, favour=0.02, edit_format=edit_format)
               for s in sources]
    assert all(text is not None for text in with_budget)
    for source, text in zip(sources, with_budget):
        verdict = check_completion(source, text, FORMATS[edit_format])
        assert verdict.valid and (verdict.consistent or not force_target), (source, text)
    assert any(text is None for text in without)


@pytest.mark.parametrize("edit_format", list(FORMATS))
@pytest.mark.parametrize("force_target", [True, False])
def test_half_characters_and_bytes_that_are_no_utf8_never_leave_a_row_stranded(grammar, tokenizer, force_target,
                                                                              edit_format):
    """What an untrained policy writes (constrained RL rollouts start from one): tokens beyond ASCII chosen often,
    60 or 80 tokens to go. Every mask offers a token, every offered token is taken (no closing quote after half a
    character), and every row ends in time with a valid chain (forced: the whole target)."""
    rng = random.Random(2)
    sources = [s for _, s, _ in triples(10)] + ["Café naïve — “quoted” text."]
    for k in range(24):
        source = sources[k % len(sources)]
        text = walk(grammar, tokenizer, source, force_target, rng, steps=rng.choice([60, 80]), budget=True,
                    favour=0.1, edit_format=edit_format, odd=0.4)
        assert text is not None, source
        verdict = check_completion(source, text, FORMATS[edit_format])
        assert verdict.valid and (verdict.consistent or not force_target), (source, text, verdict.reason)


def test_short_of_tokens_a_quote_that_only_leads_into_another_edit_is_still_offered(grammar):
    """A space inserted after the last word changes nothing, so the chain must go on: short of tokens the closing
    quote is still offered (a closing quote is kept from running on into a new edit only where another can
    end the chain), and the row goes on to its next edit."""
    source = "Tom shoves past the people."
    constraint = grammar.constraints([source], Constrain(True), WORDS, prefixes=[' insert " " after "' + source])[0]
    allowed = constraint.mask(grammar.table.size, 3).nonzero().squeeze(-1).tolist()
    assert {grammar.table.bytes_of[i] for i in allowed} == {b'"', b'";'}
    constraint.advance(grammar.table.by_bytes[b'"'][0])
    assert constraint.mask(grammar.table.size, 2).any()


def test_positions_go_forward_removed_text_is_the_sources_and_no_op_chains_cannot_end(grammar, tokenizer):
    table = grammar.table
    constraint = TokensConstraint(table, "Tom shoves people out of the line.")
    width = table.size
    constraint.feed_text("<|del|> 3 out of")
    allowed = constraint.mask(width)
    assert allowed[table.special[TGT]] and allowed[tokenizer.convert_tokens_to_ids("Ġthe")]
    assert not allowed[tokenizer.convert_tokens_to_ids("Ġline")]  # "out of line" is not the source's text
    constraint.feed_text(" <|ins|>")
    allowed = constraint.mask(width)
    assert allowed[tokenizer.convert_tokens_to_ids("Ġ")]
    constraint.feed_text(" ")
    digits = {d: tokenizer.convert_tokens_to_ids(d) for d in "0123456789"}
    allowed = constraint.mask(width)
    assert [d for d, i in digits.items() if allowed[i]] == ["5", "6", "7"]  # ins at 5..7 only (7 words)
    with pytest.raises(ValueError, match="does not continue"):
        TokensConstraint(table, "Tom shoves people.").feed_text("<|del|> 1 pushes")

    same = TokensConstraint(table, "a b")
    same.feed_text("<|rep|> 0 a <|with|> a")
    assert not same.mask(width)[table.special[TGT]]  # replacing a with a changes nothing: no target yet
    same.feed_text(" <|del|> 1 b")
    assert same.mask(width)[table.special[TGT]]
    forced = TokensConstraint(table, "a b", force_target=True, prefix="<|rep|> 0 a <|with|> c")
    forced.feed_text(TGT)
    # a forced target is written as the tokenizer spells it (as in training), one token at a time
    assert forced.mask(width).nonzero().squeeze(-1).tolist() == tokenizer("c b", add_special_tokens=False).input_ids[:1]


def test_in_words_removed_text_and_anchors_are_the_sources_and_land_where_read_puts_them(grammar, tokenizer):
    table = grammar.table
    width, tgt = table.size, table.special[TGT]

    def allows(constraint, text: str) -> bool:
        try:
            probe = grammar.constraints([constraint.source], Constrain(constraint.force_target), WORDS, [text])[0]
        except ValueError:
            return False
        return bool(probe.mask(width).any())

    source = "the cat saw the dog"
    start = grammar.constraints([source], Constrain(force_target=True), WORDS)[0]
    assert allows(start, ' replace "the dog" with "a')
    assert not allows(start, ' replace "the bird')  # not the source's words
    assert not allows(start, ' replace "the" after "dog')  # no "the" follows "dog"
    assert allows(start, ' replace "the" after "saw" with "a"') and allows(start, ' delete "cat saw"')
    assert not allows(start, ' delete "dog"; delete "cat')  # behind the cursor
    assert allows(start, ' insert "big" before "dog"') and allows(start, ' insert "!" at the end')
    forced = grammar.constraints([source], Constrain(force_target=True), WORDS,
                                 [' replace "the" after "saw" with "a"'])[0]
    assert forced.mask(width)[tgt]
    forced.advance(tgt)
    assert forced.mask(width).nonzero().squeeze(-1).tolist() == tokenizer("the cat saw a dog",
                                                                          add_special_tokens=False).input_ids[:1]
    same = grammar.constraints([source], Constrain(), WORDS, [' replace "cat" with "cat"'])[0]
    assert not same.mask(width)[tgt]  # changes nothing: no target yet


@pytest.fixture(scope="module")
def tiny(tokenizer, tmp_path_factory):
    from secondthought.models.lm import build_base_model

    return Policy.load(build_base_model("tiny-llama", tokenizer, tmp_path_factory.mktemp("constrained") / "m"))


def test_a_model_decoded_under_the_constraint_writes_only_allowed_tokens(tiny, tokenizer):
    rows = triples(6)
    prompts = [tokenizer(prompt(c, s), add_special_tokens=False).input_ids for c, s, _ in rows]
    sources = [s for _, s, _ in rows]
    params = SamplingParams(max_new_tokens=24, temperature=1.0, batch_size=4)
    free = tiny.complete(prompts, sources, params, seed=1)
    constrained = tiny.complete(prompts, sources, params, seed=1, constrain=Constrain())
    assert not any(o.verdict.parses for o in free)  # an untrained model writes no chain by itself
    for source, ids in zip(sources, tiny.sample(prompts, params, seed=1, constraints=tiny.constraints(sources, Constrain()))):
        check = tiny.constraints([source], Constrain())[0]
        for token in ids:
            assert check.mask(tiny.grammar.table.size)[token]
            check.advance(token)
    assert all(o.text.startswith(("<|ins|>", "<|del|>", "<|rep|>")) for o in constrained)


def test_recorded_masks_line_up_with_the_tokens_written_and_score_them_as_sampled(tiny, tokenizer):
    """RL's constrained rollouts: each step's mask is recorded with the token written under it, and the learner's
    restricted log-probabilities give every written token (and only allowed ones) its probability."""
    from secondthought.rl.actors import completion_logits
    from secondthought.rl.experience import Sample, collate

    rows = triples(4)
    prompts = [tokenizer(prompt(c, s), add_special_tokens=False).input_ids for c, s, _ in rows]
    constraints = tiny.constraints([s for _, s, _ in rows], Constrain())
    for c in constraints:
        c.record = []
    params = SamplingParams(max_new_tokens=20, temperature=1.0, batch_size=4)
    completions = tiny.sample(prompts, params, seed=3, constraints=constraints)
    samples = []
    for ids, c, p in zip(completions, constraints, prompts):
        assert len(c.record) == len(ids)
        masks = np.unpackbits(np.stack(c.record), axis=-1, count=tiny.model.config.vocab_size).astype(bool)
        assert all(masks[k, token] for k, token in enumerate(ids)) and not masks[0].all()
        samples.append(Sample(p, ids, allowed=np.stack(c.record)))
    tb = collate(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits, _ = completion_logits(tiny.model, tb, "cpu", samples)
    logp = torch.log_softmax(logits.float(), -1)
    written = logp.gather(-1, torch.from_numpy(tb.completion_ids).unsqueeze(-1)).squeeze(-1)
    real = torch.from_numpy(tb.completion_mask).bool()
    assert bool((written[real] > -50).all())  # every written token was allowed where the learner scores it
    assert bool((logp[real].exp().sum(-1) - 1).abs().max() < 1e-4)


def test_constrained_greedy_keeps_a_valid_chain_the_model_writes_and_continues_a_corrected_prefix(memorized_any,
                                                                                                    tokenizer):
    memorized, edit_format = memorized_any
    policy = Policy.load(memorized)
    assert policy.info.edit_format == edit_format
    context, source, target = triples(1)[0]
    ids = [tokenizer(prompt(context, source), add_special_tokens=False).input_ids]
    params = SamplingParams(max_new_tokens=120, temperature=0)  # room: a row short of tokens closes early
    free = policy.complete(ids, [source], params)[0]
    for force in (False, True):
        out = policy.complete(ids, [source], params, constrain=Constrain(force_target=force))[0]
        assert out.text == free.text and out.verdict.consistent
    prefix = FORMATS[edit_format].continued(first_edit(source, target.replace(*CORRECTION), edit_format))
    ids = [tokenizer(prompt(context, source) + prefix, add_special_tokens=False).input_ids]
    constraints = policy.constraints([source], Constrain(force_target=True), [prefix])
    written = completion_text(tokenizer, policy.sample(ids, params, constraints=constraints)[0])
    assert check_completion(source, prefix + written, FORMATS[edit_format]).consistent
    assert target.replace(*CORRECTION) == (prefix + written).split(TGT)[1]


def test_served_answers_apply_under_the_default_constrained_decoding_where_free_ones_do_not(memorized_any):
    """The memorized model writes its chain for any similar text: with a word put in front, its free chain points
    at the wrong words; the server's default (constrained, target forced) answers a chain that applies."""
    from secondthought.config import ServeConfig
    from secondthought.serving.handlers import realign_job
    from secondthought.serving.replica import Replica
    from secondthought.serving.requests import RealignRequest

    memorized, edit_format = memorized_any
    context, source, _ = triples(1)[0]
    # tokens: word numbers shift by one; words: the removed words are still there, so the chain needs other text
    request = RealignRequest(context=context, text=("Today " + source) if edit_format == "tokens" else
                             source.replace("shoves", "pushes"))
    answers = {}
    for decoding in ("free", "constrained"):
        cfg = ServeConfig(model=str(memorized), decoding=decoding)
        answers[decoding] = Replica(cfg).realign([realign_job(request, cfg, True, FORMATS[edit_format])])[0]
    assert not answers["free"]["applies"] and answers["free"]["result"] is None
    constrained = answers["constrained"]
    assert constrained["applies"] and constrained["valid"] and constrained["consistent"]
    assert constrained["result"] == constrained["target"] != request.text
    # the default: constrained for a model that never learned to write a target without its chain
    assert ServeConfig().decoding == "auto" and ServeConfig().force_target
    assert Replica(ServeConfig(model=str(memorized))).decoding == "constrained"


@pytest.mark.parametrize("edit_format", list(FORMATS))
def test_the_reserve_counts_the_tokens_of_free_text_written_so_far(grammar, tokenizer, edit_format):
    """Digits and punctuation take a token for every byte or two: the tokens kept to close the chain and write
    the forced target cover the whole result (a byte estimate left such targets cut short)."""
    source = "Maya copies the answers from the student."
    new = ":" + "".join(f" {k}." for k in range(1, 21))
    opened = ' insert "' + new if edit_format == "words" else "<|ins|> 7 " + new
    constraint = grammar.constraints([source], Constrain(True), FORMATS[edit_format], prefixes=[opened])[0]
    result = source + " " + new
    needed = len(tokenizer(result, add_special_tokens=False).input_ids) + 2  # <|tgt|> and EOS
    assert constraint.reserve(constraint.items) >= needed
