"""Decoding constrained to the source, as callers use it: how to constrain (``Constrain``) and the constraints of a
batch of rows for a tokenizer and an edit format (``ChainGrammar``). The machine is ``machine``, its grammars
``tokens_grammar`` and ``words_grammar``, the vocabulary as bytes ``vocabulary``. No Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence

from secondthought.chains.formats import TOKENS, WORDS, EditFormat
from secondthought.decoding.machine import ChainMachine
from secondthought.decoding.tokens_grammar import TokensConstraint
from secondthought.decoding.vocabulary import TokenTable
from secondthought.decoding.words_grammar import WordsConstraint

GRAMMARS = {TOKENS: TokensConstraint, WORDS: WordsConstraint}


@dataclass(frozen=True)
class Constrain:
    """How decoding is constrained to the source (None where a caller decodes freely)."""

    force_target: bool = False
    """Also force the target to the chain's result (consistent by construction); else the model writes it."""


class ChainGrammar:
    """Constraints for one tokenizer: its token table is built once (a second or so for a 49k vocabulary)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @cached_property
    def table(self) -> TokenTable:
        return TokenTable(self.tokenizer)

    def constraints(self, sources: Sequence[str], how: Constrain, fmt: EditFormat,
                    prefixes: Optional[Sequence[str]] = None) -> list[ChainMachine]:
        """One constraint per source for a model that writes chains in ``fmt``."""
        return [GRAMMARS[fmt](self.table, source, how.force_target, prefixes[k] if prefixes else "")
                for k, source in enumerate(sources)]
