"""What a completion earns, before the KL penalty: pure functions (no Ray, no torch).

adversarial: the discriminator's log-odds that (context, source, chain, target) is gold, clipped,
plus the edit-validity term; validity: the edit-validity term alone; or a user function.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from secondthought.config import ConfigError
from secondthought.edits import EditError, decipher, parse
from secondthought.formatting import check_completion, split_completion


@dataclass(frozen=True)
class Scored:
    """A completion as a reward function sees it."""

    context: str
    source: str
    reference: str
    """The gold aligned target of the prompt."""
    text: str
    """The completion (chain, <|tgt|>, target), special tokens included, EOS removed."""
    completion_ids: tuple[int, ...]
    edit_format: str = "tokens"
    """How the policy writes its chains (formatting.EDIT_FORMATS)."""


def render_chain(chain_text: str, edit_format: str = "tokens") -> str:
    """A chain in plain English for an encoder that never saw the edit tokens ("words" chains already are;
    raw text if it does not parse)."""
    if edit_format == "words":
        return chain_text.strip()
    try:
        return decipher(parse(chain_text))
    except EditError:
        return chain_text


def discriminator_pair(context: str, source: str, chain_text: str, target: str, edit_format: str = "tokens"
                       ) -> tuple[str, str]:
    return f"{context} {source}".strip(), f"{render_chain(chain_text, edit_format)} => {target}"


def reverse_negative(context: str, aligned: str, reverse_chain: str, unaligned: str, edit_format: str = "tokens"
                     ) -> tuple[str, str]:
    """A negative from a reversed chain (aligned -> unaligned): shown after the unaligned text, like every
    positive and policy sample, so that only the edits and their result tell it apart (shown after the
    aligned text, it could be told apart by its first segment alone)."""
    return discriminator_pair(context, unaligned, reverse_chain, unaligned, edit_format)


def completion_pair(item: Scored) -> tuple[str, str]:
    part = split_completion(item.text)
    return discriminator_pair(item.context, item.source, part.chain_text, part.target, item.edit_format)


def validity(items: Sequence[Scored]) -> np.ndarray:
    return np.array([check_completion(item.source, item.text, item.edit_format).validity for item in items],
                    dtype=np.float32)


def load_reward_function(spec: str) -> Callable[[Sequence[Scored]], Sequence[float]]:
    """``module:function`` -> the function (it gets the list of Scored samples, returns one float each)."""
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--rl.reward {spec!r}: cannot import {name!r} from {module_name!r} ({e})") from None
    if not callable(function):
        raise ConfigError(f"--rl.reward {spec!r} is not a function")
    return function
