"""Chains of word-level edits between a source text and a target text.

Texts are split into *units*: a word together with the whitespace in front of it. The text is
read with one virtual leading space, so every unit starts with whitespace and concatenating the
units gives back ``" " + text`` exactly (a trailing run of whitespace is a unit of its own). This
keeps every edit exact, byte for byte, and makes the serialized form unambiguous.

A chain is a list of edits whose positions index the *source* units (0-based), in order:

    <|rep|> 1 shoves <|with|> asks <|ins|> 5 to let him go first <|del|> 7 out of the line

No Ray and no torch here: this is the pure core that every stage uses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Literal, Sequence

from rapidfuzz.distance import Indel, Levenshtein

INS, DEL, REP, WITH = "<|ins|>", "<|del|>", "<|rep|>", "<|with|>"
EDIT_TOKENS = (INS, DEL, REP, WITH)

Costs = tuple[float, float, float]
"""(insert, delete, replace) cost of one word."""
DEFAULT_COSTS: Costs = (1, 1, 1)

_UNIT = re.compile(r"\s*\S+|\s+")
_MARKER = re.compile(r"<\|(ins|del|rep|with)\|>")
_POSITION = re.compile(r" (\d+)")
MAX_POSITION_DIGITS = 9
"""A word number is shorter than this (longer ones name no word, and Python refuses to read thousands of digits)."""


class EditError(ValueError):
    """Base class of the errors this module raises."""


class EditFormatError(EditError):
    """Text is not a well-formed serialized chain; the message says what is wrong and where."""


class EditApplyError(EditError):
    """A chain does not fit the source it is applied to."""


def split_units(text: str) -> list[str]:
    """The units of ``text``: each word with the whitespace before it (see module docstring)."""
    return _UNIT.findall(" " + text) if text else []


def join_units(units: Iterable[str]) -> str:
    """Inverse of :func:`split_units`."""
    return "".join(units)[1:]


def count_units(content: str) -> int:
    """How many units a piece of edit content spans."""
    return len(_UNIT.findall(content))


@dataclass(frozen=True, slots=True)
class Edit:
    """One edit: ``op`` at source unit ``pos``; ``old`` is the source text it removes, ``new`` what it writes."""

    op: Literal["ins", "del", "rep"]
    pos: int
    old: str = ""
    new: str = ""

    def cost(self, costs: Costs) -> float:
        ins, dele, rep = costs
        n_old, n_new = count_units(self.old), count_units(self.new)
        both = min(n_old, n_new)
        return both * rep + (n_new - both) * ins + (n_old - both) * dele


@dataclass(frozen=True, slots=True)
class EditChain:
    """An ordered chain of edits. ``costs`` records the cost set it was computed under."""

    edits: tuple[Edit, ...] = ()
    costs: Costs | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.edits)

    @property
    def cost(self) -> float:
        """Total cost under the cost set the chain was computed with (default costs if parsed)."""
        return self.cost_under(self.costs or DEFAULT_COSTS)

    def cost_under(self, costs: Costs) -> float:
        return sum(edit.cost(costs) for edit in self.edits)

    def apply(self, source: str) -> str:
        """The text this chain makes of ``source``; raises :class:`EditApplyError` if it does not fit."""
        units = split_units(source)
        out: list[str] = []
        cursor = 0
        for number, edit in enumerate(self.edits, start=1):
            if not cursor <= edit.pos <= len(units):
                where = "before an earlier edit" if edit.pos < cursor else "past the end of the source"
                raise EditApplyError(
                    f"edit {number} ({edit.op} at word {edit.pos}) points {where} "
                    f"(the source has {len(units)} words)"
                )
            out.extend(units[cursor : edit.pos])
            cursor = edit.pos
            if edit.op != "ins":
                span = count_units(edit.old)
                found = "".join(units[cursor : cursor + span])
                if found != edit.old:
                    raise EditApplyError(
                        f"edit {number} ({edit.op} at word {edit.pos}) expects {edit.old.strip()!r} "
                        f"but the source has {found.strip()!r} there"
                    )
                cursor += span
            if edit.op != "del":
                out.append(edit.new)
        out.extend(units[cursor:])
        return join_units(out)


def check_costs(costs: Sequence[float]) -> Costs:
    """Validate one (insert, delete, replace) cost set."""
    return _checked(tuple(costs))


@lru_cache(maxsize=64)
def _checked(costs: tuple) -> Costs:
    if len(costs) != 3:
        raise ValueError(f"a cost set has 3 numbers (insert, delete, replace), got {tuple(costs)!r}")
    if not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in costs):
        raise ValueError(f"edit costs must be positive finite numbers, got {tuple(costs)!r}")
    return (costs[0], costs[1], costs[2])


def _aligned_ops(src: list[str], tgt: list[str], costs: Costs) -> list[tuple[str, int, int]]:
    """Minimum-cost unit operations (tag, source index, target index).

    With I - D fixed by the lengths, the total cost depends on the costs only through the ratio of
    the replace cost to the mean of insert and delete costs: ratio 1 is plain Levenshtein and
    ratio >= 2 never replaces (Indel); rapidfuzz does both. Any other ratio takes the DP.
    """
    ins, dele, rep = costs
    ratio = rep / ((ins + dele) / 2)
    if math.isclose(ratio, 1.0):
        return Levenshtein.editops(src, tgt).as_list()
    if ratio >= 2.0:
        return Indel.editops(src, tgt).as_list()
    from secondthought.chains.dp import weighted_editops

    vocab: dict[str, int] = {}
    a = [vocab.setdefault(u, len(vocab)) for u in src]
    b = [vocab.setdefault(u, len(vocab)) for u in tgt]
    return weighted_editops(a, b, ins, dele, rep)


def _chain(src: list[str], tgt: list[str], costs: Costs) -> EditChain:
    """Merge the unit operations of one alignment into edits; runs of one kind become one span."""
    edits: list[Edit] = []
    op = ""
    pos = last_i = last_j = -2
    old: list[str] = []
    new: list[str] = []
    # rapidfuzz and the DP list operations along the alignment path, so positions never go back
    # and an insertion at position p comes before a deletion or replacement of word p.
    for tag, i, j in _aligned_ops(src, tgt, costs):
        if tag == "insert":
            extends = op == "ins" and i == last_i and j == last_j + 1
            kind = "ins"
        elif tag == "delete":
            extends = op == "del" and i == last_i + 1
            kind = "del"
        else:
            extends = op == "rep" and i == last_i + 1 and j == last_j + 1
            kind = "rep"
        if not extends:
            if op:
                edits.append(Edit(op, pos, "".join(old), "".join(new)))
            op, pos, old, new = kind, i, [], []
        if kind != "ins":
            old.append(src[i])
        if kind != "del":
            new.append(tgt[j])
        last_i, last_j = i, j
    if op:
        edits.append(Edit(op, pos, "".join(old), "".join(new)))
    return EditChain(tuple(edits), costs)


def compute_edits(source: str, target: str, costs: Sequence[float] = DEFAULT_COSTS) -> EditChain:
    """The minimum-cost chain of word edits that turns ``source`` into ``target``.

    ``costs`` is (insert, delete, replace) per word. Runs of edits of one kind become spans.
    """
    return _chain(split_units(source), split_units(target), check_costs(costs))


def joined(chain: EditChain) -> EditChain:
    """The chain with each run of edits that touch (one starts where the one before it ends) written as one edit:
    an insert beside a delete becomes one replace, a replace beside a delete one longer replace. The same result in
    fewer edits that each change a whole phrase, which a reader can judge (and untick) on its own."""
    out: list[Edit] = []
    for edit in chain.edits:
        last = out[-1] if out else None
        if last is not None and edit.pos == last.pos + count_units(last.old):
            old, new = last.old + edit.old, last.new + edit.new
            out[-1] = Edit("rep" if old and new else "del" if old else "ins", last.pos, old, new)
        else:
            out.append(edit)
    return EditChain(tuple(out), chain.costs)


def derived_chain(source: str, target: str) -> EditChain:
    """The chain shown for a target written without one: the minimum-cost chain to it, touching edits joined."""
    return joined(compute_edits(source, target.strip()))


def augment(source: str, target: str, cost_sets: Iterable[Sequence[float]]) -> list[EditChain]:
    """One chain per cost set, identical chains kept once (first cost set wins)."""
    src, tgt = split_units(source), split_units(target)
    chains: list[EditChain] = []
    seen: set[tuple[Edit, ...]] = set()
    for costs in cost_sets:
        chain = _chain(src, tgt, check_costs(costs))
        if chain.edits not in seen:
            seen.add(chain.edits)
            chains.append(chain)
    return chains


def _check_content(text: str, what: str) -> None:
    if _MARKER.search(text):
        raise EditFormatError(f"{what} {text.strip()!r} contains a reserved edit marker {EDIT_TOKENS}")


def serialize(chain: EditChain) -> str:
    """The chain as text with edit markers; :func:`parse` reads it back."""
    parts = []
    for edit in chain.edits:
        _check_content(edit.old + edit.new, "edit content")
        if edit.op == "ins":
            parts.append(f"{INS} {edit.pos}{edit.new}")
        elif edit.op == "del":
            parts.append(f"{DEL} {edit.pos}{edit.old}")
        else:
            parts.append(f"{REP} {edit.pos}{edit.old} {WITH}{edit.new}")
    return " ".join(parts)


def _content(text: str, start: int, end: int, last: bool, what: str) -> str:
    """Edit content text[start:end], less the one space that separates it from the next marker."""
    if not last:
        if end - 1 < start or text[end - 1] != " ":
            raise EditFormatError(f"{what}: missing space before the marker at character {end}")
        end -= 1
    content = text[start:end]
    if not content:
        raise EditFormatError(f"{what} at character {start}: no text")
    if not content[0].isspace():
        raise EditFormatError(f"{what} at character {start}: text must start with a space, got {content[:20]!r}")
    return content


def parse(text: str) -> EditChain:
    """Read a serialized chain; malformed text raises :class:`EditFormatError` naming the problem."""
    if not text.strip():
        return EditChain()
    markers = list(_MARKER.finditer(text))
    if not markers or markers[0].start() != 0:
        first = markers[0].start() if markers else len(text)
        raise EditFormatError(f"expected an edit marker at character 0, found {text[:first][:20]!r}")
    edits: list[Edit] = []
    k = 0
    while k < len(markers):
        marker = markers[k]
        kind = marker.group(1)
        what = f"{marker.group(0)} (edit {len(edits) + 1})"
        if kind == "with":
            raise EditFormatError(f"{WITH} at character {marker.start()} without a {REP} before it")
        position = _POSITION.match(text, marker.end())
        if not position:
            raise EditFormatError(
                f"{what} at character {marker.start()}: expected ' <word number> <text>', "
                f"found {text[marker.end():marker.end() + 20]!r}"
            )
        if len(position.group(1)) > MAX_POSITION_DIGITS:
            raise EditFormatError(f"{what} at character {marker.start()}: word number {position.group(1)[:12]}... "
                                  f"has more than {MAX_POSITION_DIGITS} digits")
        pos = int(position.group(1))
        nxt = markers[k + 1] if k + 1 < len(markers) else None
        end = nxt.start() if nxt else len(text)
        first = _content(text, position.end(), end, nxt is None, what)
        if kind != "rep":
            edits.append(Edit(kind, pos, first if kind == "del" else "", first if kind == "ins" else ""))
            k += 1
            continue
        if nxt is None or nxt.group(1) != "with":
            raise EditFormatError(f"{what} at character {marker.start()} has no {WITH} part")
        after = markers[k + 2] if k + 2 < len(markers) else None
        new = _content(text, nxt.end(), after.start() if after else len(text), after is None, f"{WITH} of {what}")
        edits.append(Edit("rep", pos, first, new))
        k += 2
    return EditChain(tuple(edits))


def _words(content: str) -> str:
    return " ".join(content.split())


def _where(edit: Edit) -> str:
    span = count_units(edit.old)
    first = edit.pos + 1
    return f"word {first}" if span <= 1 else f"words {first}-{first + span - 1}"


def describe(edit: Edit) -> str:
    """One edit in plain English, e.g. ``replace "shoves" with "asks" (word 2)``."""
    old, new = _words(edit.old), _words(edit.new)
    if edit.op == "ins":
        return f'insert "{new}" before word {edit.pos + 1}'
    if edit.op == "del":
        return f'delete "{old}" ({_where(edit)})'
    return f'replace "{old}" with "{new}" ({_where(edit)})'


def decipher(chain: EditChain) -> str:
    """The chain in plain English, e.g. ``replace "shoves" with "asks"; delete "out of the line"``."""
    return "; ".join(describe(edit) for edit in chain.edits) if chain.edits else "no edits"
