"""The training text the LM learns: ``context <|src|> source <|sep|> chain <|tgt|> target <eos>``.

The prompt is everything up to and including ``<|sep|>``; the model writes the chain of edits,
then ``<|tgt|>`` and the target. Pure functions: no tokenizer state, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from secondthought.chains.edits import EDIT_TOKENS, EditError, EditFormatError, derived_chain
from secondthought.chains.formats import EditFormat

SRC, SEP, TGT = "<|src|>", "<|sep|>", "<|tgt|>"
FORMAT_TOKENS = (SRC, SEP, TGT)
SPECIAL_TOKENS = FORMAT_TOKENS + EDIT_TOKENS
"""Tokens added to the tokenizer as special (never split, never merged with text); reserved in data."""
TOKEN_MEANINGS = {SRC: " text:", SEP: " edits:", TGT: " result:", "<|ins|>": " insert", "<|del|>": " delete",
                  "<|rep|>": " replace", "<|with|>": " with"}
"""Words whose embeddings start the new tokens' embeddings in a pretrained model: a model learns to
write a token whose embedding means something much faster than one that starts as the average."""


def reserved_token(text: str) -> str | None:
    """The first token reserved for the training text's structure that ``text`` holds, or None: such text would
    change the structure of a prompt it is put in."""
    return next((token for token in SPECIAL_TOKENS if token in text), None)


def prompt(context: str, source: str) -> str:
    return f"{context}{SRC}{source}{SEP}"


def completion(chain_text: str, target: str) -> str:
    """What the model writes after the prompt (the tokenizer's EOS follows it)."""
    return f"{chain_text}{TGT}{target}"


def derived_completion(source: str, target: str, fmt: EditFormat) -> str:
    """A target written without a chain, as a completion whose chain is the exact chain of edits from ``source`` to
    it (``edits.derived_chain``): the chain always applies and gives that target. A token reserved for the structure
    in ``target`` is dropped: it is no text a chain can write."""
    for token in SPECIAL_TOKENS:
        target = target.replace(token, "")
    return completion(fmt.write(derived_chain(source, target), source), target)


@dataclass(frozen=True)
class Completion:
    """A model's completion split into its parts."""

    chain_text: str
    target: str


def split_completion(text: str) -> Completion:
    """Split generated text at ``<|tgt|>``; text without it is all chain and an empty target."""
    chain_text, _, target = text.partition(TGT)
    return Completion(chain_text, target)


@dataclass(frozen=True)
class Verdict:
    """What a generated completion is worth as an edit: does its chain parse, apply to the source,
    and give the target the model wrote after it?"""

    parses: bool
    applies: bool
    consistent: bool
    n_edits: int = 0
    reason: str = ""
    no_op: bool = False
    """The chain applies and changes nothing: never a correction (no prepared pair has source == target)."""

    @property
    def valid(self) -> bool:
        """Applies and changes something."""
        return self.applies and not self.no_op

    @property
    def validity(self) -> float:
        """+1 consistent, 0 applies but gives another text than the written target, -1 otherwise (also
        for a chain that changes nothing: else copying the source would earn the most)."""
        return -1.0 if not self.valid else 1.0 if self.consistent else 0.0


def check_completion(source: str, text: str, fmt: EditFormat) -> Verdict:
    """What ``text`` (chain, <|tgt|>, target) is worth for ``source``, its chain written in ``fmt``."""
    part = split_completion(text)
    if TGT not in text:
        return Verdict(False, False, False, reason=f"no {TGT}: the completion never wrote a target")
    try:
        chain = fmt.parse(part.chain_text)
    except EditFormatError as e:
        return Verdict(False, False, False, reason=f"chain does not parse: {e}")
    n_edits = len(chain)
    try:
        edited = fmt.locate(chain, source).apply(source)
    except EditError as e:
        return Verdict(True, False, False, n_edits, reason=f"chain does not apply: {e}")
    consistent = edited.strip() == part.target.strip()
    if edited.strip() == source.strip():
        return Verdict(True, True, consistent, n_edits, reason="the chain changes nothing", no_op=True)
    return Verdict(True, True, consistent, n_edits,
                   reason="" if consistent else "target differs from the edited source")
