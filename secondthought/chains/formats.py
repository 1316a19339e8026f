"""The two ways a chain of edits is written in the training text, each one object: ``TOKENS`` (edit tokens and word
numbers, ``edits.serialize``: ``<|rep|> 1 shoves <|with|> asks``) and ``WORDS`` (English that names words,
``words``: ``replace "shoves" with "asks"``, the paper's deciphered edits).

A run chooses one when its data is prepared (``--prepare.edit_format``); models record its name, and every reader
turns that name into the object once (:func:`edit_format`), so no caller tests a format's name. Pure: no Ray.
"""

from __future__ import annotations

from typing import Sequence

from secondthought.chains import words
from secondthought.chains.edits import DEL, INS, REP, WITH, EditChain, EditError, decipher, parse, serialize


class EditFormat:
    """How chains are written and read back: ``read(write(chain, s), s) == chain`` for every chain of ``s``."""

    name: str

    def write(self, chain: EditChain, source: str) -> str:
        raise NotImplementedError

    def parse(self, text: str):
        """The chain's text as edits not yet placed in a source (EditFormatError if it is none)."""
        raise NotImplementedError

    def locate(self, parsed, source: str) -> EditChain:
        """Parsed edits placed in ``source`` (EditApplyError where they name words it does not have)."""
        raise NotImplementedError

    def read(self, text: str, source: str) -> EditChain:
        """The chain a text gives for ``source``."""
        return self.locate(self.parse(text), source)

    def continued(self, chain_text: str) -> str:
        """A corrected first part of a chain as the text a model continues."""
        return chain_text

    def plain(self, chain_text: str) -> str:
        """The chain in plain English, for an encoder that never saw the edit tokens."""
        raise NotImplementedError

    def layout(self, chain: EditChain, text: str, special: dict[str, int]) -> Sequence[str | int]:
        """The written chain as pieces of text and special-token ids (``special``: marker -> id)."""
        return [text]

    def __repr__(self) -> str:
        return f"EditFormat({self.name!r})"

    def __reduce__(self):  # unpickled (in a Ray actor) as the same object: formats are compared by identity
        return edit_format, (self.name,)


class _Tokens(EditFormat):
    name = "tokens"

    def write(self, chain: EditChain, source: str) -> str:
        return serialize(chain)

    def parse(self, text: str) -> EditChain:
        return parse(text)

    def locate(self, parsed: EditChain, source: str) -> EditChain:
        return parsed  # placed by word numbers: EditChain.apply checks them

    def plain(self, chain_text: str) -> str:
        try:
            return decipher(parse(chain_text))
        except EditError:
            return chain_text  # raw text where it does not parse

    def layout(self, chain: EditChain, text: str, special: dict[str, int]) -> Sequence[str | int]:
        out: list[str | int] = []
        for k, edit in enumerate(chain.edits):
            if k:
                out.append(" ")
            if edit.op == "rep":
                out += (special[REP], f" {edit.pos}", edit.old, " ", special[WITH], edit.new)
            elif edit.op == "ins":
                out += (special[INS], f" {edit.pos}", edit.new)
            else:
                out += (special[DEL], f" {edit.pos}", edit.old)
        return out


class _Words(EditFormat):
    name = "words"

    def write(self, chain: EditChain, source: str) -> str:
        return words.write(chain, source)

    def parse(self, text: str) -> list[words.Instruction]:
        return words.parse(text)

    def locate(self, parsed: list[words.Instruction], source: str) -> EditChain:
        return words.locate(parsed, source)

    def continued(self, chain_text: str) -> str:
        # stops before its closing quote: the tokenizer writes a quote and what follows it as one token (``";``),
        # so a prompt that ends on a lone quote is one the model never saw; it writes the quote itself
        return chain_text.removesuffix('"')

    def plain(self, chain_text: str) -> str:
        return chain_text.strip()


TOKENS, WORDS = _Tokens(), _Words()
FORMATS = {f.name: f for f in (TOKENS, WORDS)}
LEGACY = TOKENS
"""The format of data and models from before the choice existed (their metadata names none)."""


def edit_format(name: str) -> EditFormat:
    """The format called ``name`` (ValueError naming the known ones otherwise)."""
    if name not in FORMATS:
        raise ValueError(f"unknown edit format {name!r}: {' or '.join(FORMATS)}")
    return FORMATS[name]
