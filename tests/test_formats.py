"""The edit format as one object: each writes chains its own way and reads them back, is chosen by name once,
and stays the same object through pickling (Ray ships it to actors; constraints are looked up by it)."""

import pickle

import pytest

from secondthought.chains.edits import compute_edits
from secondthought.chains.formats import FORMATS, LEGACY, TOKENS, WORDS, edit_format
from secondthought.chains.text import check_completion, completion
from secondthought.config import ConfigError, PrepareConfig, SFTConfig
from secondthought.decoding.constraints import GRAMMARS
from secondthought.runs import ModelInfo


@pytest.mark.parametrize("fmt", [TOKENS, WORDS])
def test_each_format_reads_back_what_it_writes_and_checks_it(fmt):
    source, target = "Tom shoves the kid out of the line.", "Tom asks the kid to let him go first."
    chain = compute_edits(source, target)
    text = fmt.write(chain, source)
    assert fmt.read(text, source) == chain and fmt.locate(fmt.parse(text), source).apply(source) == target
    assert check_completion(source, completion(text, target), fmt).consistent
    assert fmt.plain(text) and "<|" not in fmt.plain(text)  # what the discriminator reads: plain words


def test_a_format_is_chosen_by_name_once_and_survives_pickling():
    assert set(FORMATS) == {"tokens", "words"} and GRAMMARS.keys() == {TOKENS, WORDS}
    assert edit_format("words") is WORDS and pickle.loads(pickle.dumps(WORDS)) is WORDS
    with pytest.raises(ValueError, match="unknown edit format 'xml': tokens or words"):
        edit_format("xml")
    assert ModelInfo(edit_format="words").format is WORDS and ModelInfo().format is LEGACY
    assert PrepareConfig().edit_format == WORDS.name  # the project's default is words, named in the config alone


def test_a_range_error_names_the_flag_and_the_interval():
    with pytest.raises(ConfigError, match=r"--sft.warmup_fraction must be in \[0, 1\), got 1.0"):
        SFTConfig(warmup_fraction=1.0)
    with pytest.raises(ConfigError, match="--sft.max_steps must be at least 1, got 0"):
        SFTConfig(max_steps=0)
    assert SFTConfig(max_steps=None).max_steps is None  # not set: not checked
