"""Chains written as English instructions: read back exactly, for every pair of the shared datasets and for
texts hypothesis makes up; words, not numbers, say where; bad text gets an error that names the problem."""

import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secondthought import data as datasets
from secondthought.chains.edits import EditApplyError, EditFormatError, compute_edits
from secondthought.chains.formats import WORDS
from secondthought.chains.text import check_completion, completion
from secondthought.chains.words import locate, parse, quoted, read, unquoted, write
from secondthought.config import DataConfig
from secondthought.data.schema import Triple
from tests.conftest import shared_file
from tests.test_edits import COST_SETS, texts


def round_trip(source: str, target: str, costs=(1, 1, 1)) -> str:
    chain = compute_edits(source, target, costs)
    text = write(chain, source)
    back = read(text, source)
    assert back.edits == chain.edits, (source, target, text)
    assert back.apply(source) == target
    return text


def test_instructions_read_like_the_papers_deciphered_edits():
    source, target = "Tom shoves the kid out of the line to go first.", "Tom asks the kid to let him go first."
    assert round_trip(source, target) == (' replace "shoves" with "asks"; replace "out of the" with "to let him"; '
                                          'delete "line to"')
    assert check_completion(source, completion(round_trip(source, target), target), WORDS).consistent


def test_a_repeated_word_is_singled_out_by_the_word_before_it_not_by_a_number():
    assert round_trip("the cat saw the dog and the bird", "the cat saw a dog and the bird") == \
        ' replace "the" after "saw" with "a"'
    assert round_trip("I gave it to him and to her.", "I gave it to him and not to her.") == \
        ' insert "not" before "to her."'
    # text repeated so that no word after the place singles it out: the words before it do
    assert round_trip("a a a", "a a b a") == ' insert "b" after "a a"'
    assert round_trip("Go home.", "Go home. Now") == ' insert "Now" at the end'


@settings(max_examples=300, deadline=None)
@given(texts, texts, st.sampled_from(COST_SETS))
def test_property_read_of_write_is_the_chain(source, target, costs):
    round_trip(source, target, costs)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_property_arbitrary_unicode_quotes_and_control_characters(source, target):
    if "<|" not in source + target:
        round_trip(source, target)


@given(st.text(max_size=20).filter(lambda t: t[:1].isspace()) | st.text(max_size=20).map(lambda t: " " + t))
def test_quoted_text_is_exact(content):
    assert unquoted(json.loads(quoted(content))) == content


def shared_pairs() -> dict[str, list[tuple[str, str]]]:
    pairs = {}
    for name in ("train.jsonl", "dev.jsonl", "train_norm_actions.jsonl"):
        with open(shared_file("moral_stories", name), encoding="utf-8") as f:
            pairs[f"moral-stories/{name}"] = [(r["immoral_action"], r["moral_action"]) for r in map(json.loads, f)]
    for dataset, path in [("ethics-commonsense", ("commonsense", "cm_test.csv")),
                          ("ethics-deontology", ("deontology", "deontology_train.csv")),
                          ("ethics-justice", ("justice", "justice_train.csv")),
                          ("ethics-utilitarianism", ("utilitarianism", "util_train.csv"))]:
        cfg = DataConfig(dataset=dataset, input=[str(shared_file("ethics", *path))])
        triples = [t for chunk in datasets.plan(cfg, 1 << 24) for t in datasets.triples(chunk, cfg)
                   if isinstance(t, Triple)]
        pairs[dataset] = [(t.source, t.target) for t in triples]
    return pairs


def test_every_pair_of_the_shared_datasets_reads_back_exactly_with_no_word_numbers():
    started = time.perf_counter()
    counted = {}
    for name, pairs in shared_pairs().items():
        counted[name] = len(pairs)
        for source, target in pairs:
            for costs in [(1, 1, 1), (1, 1, 2)]:
                text = round_trip(source, target, costs)
                # outside the quoted text, only the instruction words: no number says where
                assert not re.search(r"\d", re.sub(r'"(?:[^"\\]|\\.)*"', "", text)), text
    assert counted["moral-stories/train_norm_actions.jsonl"] == 10000 and counted["ethics-deontology"] > 5000
    assert sum(counted.values()) > 30000
    print(f"{sum(counted.values())} pairs in {time.perf_counter() - started:.0f} s: {counted}")


def test_malformed_text_names_the_problem_and_a_missing_word_names_the_word():
    with pytest.raises(EditFormatError, match='expected " insert ", " delete " or " replace " at character 0'):
        parse("replace it")
    with pytest.raises(EditFormatError, match="the new text of replace"):
        parse(' replace "a" with b')
    with pytest.raises(EditFormatError, match='" with " in replace'):
        parse(' replace "a"; delete "b"')
    with pytest.raises(EditFormatError, match="before.*after.*at the end"):
        parse(' insert "a"')
    with pytest.raises(EditFormatError, match="not a well-formed quoted text"):
        parse(' delete "a\\q"')
    with pytest.raises(EditApplyError, match=r"instruction 2 \(del\): 'dog' is not in the source after"):
        read(' delete "cat"; delete "dog"', "the dog and the cat")
    with pytest.raises(EditApplyError, match="after 'sat'"):
        locate(parse(' delete "the" after "sat"'), "the cat saw the dog")
    assert read("", "anything").edits == ()
    verdict = check_completion("the dog", ' delete "cat"<|tgt|>the', WORDS)
    assert verdict.parses and not verdict.applies and "not in the source" in verdict.reason
    assert not check_completion("the dog", ' remove "dog"<|tgt|>the', WORDS).parses
