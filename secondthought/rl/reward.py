"""What a completion earns, before the KL penalty: pure functions (no Ray, no torch).

adversarial: the discriminator's log-odds that (context, source, chain, target) is gold, clipped,
plus the edit-validity term; validity: the edit-validity term alone; or a user function.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from secondthought.chains.formats import EditFormat
from secondthought.chains.text import check_completion, split_completion
from secondthought.config import ConfigError


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
    format: EditFormat
    """How the policy writes its chains."""


def discriminator_pair(context: str, source: str, chain_text: str, target: str, fmt: EditFormat
                       ) -> tuple[str, str]:
    """What the discriminator reads: the prompt, and the chain in plain English with its result."""
    return f"{context} {source}".strip(), f"{fmt.plain(chain_text)} => {target}"


def reverse_negative(context: str, aligned: str, reverse_chain: str, unaligned: str, fmt: EditFormat
                     ) -> tuple[str, str]:
    """A negative from a reversed chain (aligned -> unaligned): shown after the unaligned text, like every
    positive and policy sample, so that only the edits and their result tell it apart (shown after the
    aligned text, it could be told apart by its first segment alone)."""
    return discriminator_pair(context, unaligned, reverse_chain, unaligned, fmt)


def completion_pair(item: Scored) -> tuple[str, str]:
    part = split_completion(item.text)
    return discriminator_pair(item.context, item.source, part.chain_text, part.target, item.format)


def validity(items: Sequence[Scored]) -> np.ndarray:
    return np.array([check_completion(item.source, item.text, item.format).validity for item in items],
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
