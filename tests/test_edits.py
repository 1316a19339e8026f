import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secondthought.chains.edits import (
    Edit,
    EditApplyError,
    EditChain,
    EditFormatError,
    augment,
    compute_edits,
    decipher,
    join_units,
    parse,
    serialize,
    split_units,
)
from tests.conftest import shared_file

COST_SETS = [(1, 1, 1), (1, 1, 2), (1, 1, 1.5), (2, 1, 0.5), (1, 3, 2.5), (0.5, 0.5, 3)]


def reference_cost(source: str, target: str, costs) -> float:
    """Plain weighted Levenshtein over the same units, written out independently."""
    a, b = split_units(source), split_units(target)
    ins, dele, rep = costs
    prev = [j * ins for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        cur = [i * dele] + [0.0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + dele, cur[j - 1] + ins, prev[j - 1] + (0 if a[i - 1] == b[j - 1] else rep))
        prev = cur
    return prev[-1]


def check(source: str, target: str, costs) -> EditChain:
    chain = compute_edits(source, target, costs)
    assert chain.apply(source) == target
    text = serialize(chain)
    assert parse(text) == chain
    assert parse(text).apply(source) == target
    assert chain.cost == pytest.approx(reference_cost(source, target, costs))
    return chain


def test_example_from_the_design():
    source = "Tom shoves people out of the line"
    target = "Tom asks people to let him go first"
    chain = check(source, target, (1, 1, 1))
    assert serialize(chain).startswith("<|rep|> 1 shoves <|with|> asks")
    assert decipher(chain).startswith('replace "shoves" with "asks" (word 2)')


def test_units_round_trip_keeps_every_byte():
    for text in ["", " ", "a", "  two  spaces ", "tab\tand\nnewline\r\n", "end."]:
        assert join_units(split_units(text)) == text


def test_merged_spans_and_costs():
    chain = check("a b c d e", "a x y d e f g", (1, 1, 1))
    assert [e.op for e in chain.edits] == ["rep", "ins"]
    assert chain.edits[0] == Edit("rep", 1, " b c", " x y")
    assert chain.cost == 4


def test_indel_cost_set_never_replaces():
    chain = check("the cat sat", "the dog sat", (1, 1, 2))
    assert {e.op for e in chain.edits} == {"ins", "del"}
    assert chain.cost == 2


def test_augment_keeps_distinct_chains_only():
    chains = augment("the cat sat", "the dog sat", [(1, 1, 1), (2, 2, 2), (1, 1, 2)])
    assert len(chains) == 2
    assert all(c.apply("the cat sat") == "the dog sat" for c in chains)
    assert len(augment("same text", "same text", COST_SETS)) == 1


def test_bad_costs_are_named():
    with pytest.raises(ValueError, match="positive"):
        compute_edits("a", "b", (1, 0, 1))
    with pytest.raises(ValueError, match="3 numbers"):
        compute_edits("a", "b", (1, 1))


@pytest.mark.parametrize(
    "text, problem",
    [
        ("rep 1 shoves", "expected an edit marker at character 0"),
        ("<|ins|> five to go", "expected ' <word number> <text>'"),
        ("<|ins|> 5", "no text"),
        ("<|rep|> 1 shoves", "has no <|with|> part"),
        ("<|with|> asks", "without a <|rep|> before it"),
        ("<|del|> 2 x<|ins|> 3 y", "missing space before the marker at character 11"),
        ("<|ins|> 3foo", "text must start with a space"),
    ],
)
def test_malformed_chains_raise_one_error_type_naming_the_problem(text, problem):
    with pytest.raises(EditFormatError, match=problem.replace("|", r"\|").replace("(", r"\(")):
        parse(text)


def test_chain_that_does_not_fit_its_source_is_reported():
    chain = parse("<|del|> 1 dog")
    with pytest.raises(EditApplyError, match="expects 'dog' but the source has 'cat'"):
        chain.apply("the cat sat")
    with pytest.raises(EditApplyError, match="past the end"):
        parse("<|ins|> 9 x").apply("a b")
    with pytest.raises(EditApplyError, match="before an earlier edit"):
        parse("<|del|> 1 b <|ins|> 0 x").apply("a b")


def test_content_with_markers_cannot_be_serialized():
    chain = compute_edits("a", "a <|ins|> b")
    with pytest.raises(EditFormatError, match="reserved"):
        serialize(chain)


words = st.sampled_from(["the", "The", "cat", "sat", "on", "mat", ".", "é", "日本", "a,", "!", "don't", "-", "x"])
spaces = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", " \n ", "\u3000", "\r\n"])
texts = st.lists(st.tuples(spaces, words), max_size=12).map(lambda parts: "".join(s + w for s, w in parts)).flatmap(
    lambda body: st.tuples(st.sampled_from(["", " ", "\n"]), st.sampled_from(["", " ", "\n", "  "])).map(
        lambda ends: (ends[0] + body.lstrip() + ends[1]) if body else ends[0]
    )
)


@settings(max_examples=300, deadline=None)
@given(texts, texts, st.sampled_from(COST_SETS))
def test_property_exact_optimal_and_round_trip(source, target, costs):
    check(source, target, costs)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_property_arbitrary_unicode(source, target):
    if "<|" in source + target:
        return
    for costs in [(1, 1, 1), (1, 1, 1.5)]:
        check(source, target, costs)


def test_every_moral_stories_pair():
    pairs = []
    for name in ("train.jsonl", "dev.jsonl", "train_norm_actions.jsonl"):
        with open(shared_file("moral_stories", name), encoding="utf-8") as f:
            pairs += [(row["immoral_action"], row["moral_action"]) for row in map(json.loads, f)]
    assert len(pairs) > 13000
    for n, (source, target) in enumerate(pairs):
        for costs in [(1, 1, 1), (1, 1, 2), (1, 1, 1.5)]:
            chain = compute_edits(source, target, costs)
            assert parse(serialize(chain)).apply(source) == target
            if n % 20 == 0:
                assert chain.cost == pytest.approx(reference_cost(source, target, costs))
