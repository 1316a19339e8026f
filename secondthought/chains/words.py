"""Chains of edits written as English instructions: the paper's "deciphered" edits, as a training format.

    replace "shoves" with "asks"; insert "to" before "let"; delete "the" after "took"

Every instruction names words, never numbers: a removed span is the first occurrence of its text at or after
the cursor (where the previous instruction ended), or, when that is another occurrence, the first one that
follows an anchor (``after "took"``: the fewest source words in front of it that single it out). An insertion
goes before the first occurrence of an anchor from the cursor (``before "let"``), after one when no "before"
anchor can single the place out (repeated text), or ``at the end``. So the text is read left to right with the
source at hand, and :func:`read` turns it back into the exact chain: ``read(write(chain, s), s) == chain``.

Quoted text is a JSON string (escapes for ``"``, ``\\`` and control characters). A unit's usual single leading
space is left out of the quotes; quoted text that starts with whitespace gives its whitespace exactly, so the
edits stay byte-exact. Pure: no Ray, no torch.
"""

from __future__ import annotations

import json
import re
from typing import Optional, Sequence

from secondthought.chains.edits import Edit, EditApplyError, EditChain, EditFormatError, count_units, split_units

SEPARATOR = ";"
OPS = {"ins": " insert ", "del": " delete ", "rep": " replace "}
AFTER, BEFORE, WITH, AT_END = " after ", " before ", " with ", " at the end"

_DECODER = json.JSONDecoder()
_OP = re.compile(r" (insert|delete|replace) ")


def shown(content: str) -> str:
    """Edit content as it stands between the quotes: without the one leading space a unit usually has, else
    exactly (quoted text that starts with whitespace gives its whitespace)."""
    return content[1:] if content.startswith(" ") and not content[1:2].isspace() else content


def quoted(content: str) -> str:
    """Edit content as a JSON string (see :func:`shown`)."""
    return json.dumps(shown(content), ensure_ascii=False)


def unquoted(shown: str) -> str:
    """Inverse of :func:`quoted` (after JSON decoding)."""
    return shown if shown[:1].isspace() else " " + shown


def _first(units: Sequence[str], cursor: int, text: str, anchor: str = "", before: bool = False) -> Optional[int]:
    """The first unit index i >= cursor where ``text`` starts (``before``: where ``anchor`` starts) and, if given,
    ``anchor`` ends just before i (``before``: no other text is asked for)."""
    n, k = count_units(text), count_units(anchor)
    for i in range(max(cursor, 0 if before else k), len(units) + 1):
        if before:
            if "".join(units[i : i + k]) == anchor and i + k <= len(units):
                return i
        elif "".join(units[i : i + n]) == text and i + n <= len(units) and "".join(units[i - k : i]) == anchor:
            return i
    return None


def _place(units: list[str], cursor: int, edit: Edit) -> str:
    """The words that single out where ``edit`` goes, given the cursor."""
    if edit.op == "ins":
        if edit.pos == len(units):
            return AT_END
        for k in range(1, len(units) - edit.pos + 1):
            anchor = "".join(units[edit.pos : edit.pos + k])
            if _first(units, cursor, "", anchor, before=True) == edit.pos:
                return BEFORE + quoted(anchor)
        text = ""
    else:
        text = edit.old
        if _first(units, cursor, text) == edit.pos:
            return ""
    for k in range(1, edit.pos + 1):
        anchor = "".join(units[edit.pos - k : edit.pos])
        if _first(units, cursor, text, anchor) == edit.pos:
            return AFTER + quoted(anchor)
    raise AssertionError(f"no anchor singles out {edit} (cannot happen: the whole text before it does)")


def write(chain: EditChain, source: str) -> str:
    """The chain as instructions for ``source`` (the chain must apply to it); :func:`read` gives it back."""
    units = split_units(source)
    parts, cursor = [], 0
    for edit in chain.edits:
        where = _place(units, cursor, edit)
        if edit.op == "ins":
            parts.append(f"{OPS['ins']}{quoted(edit.new)}{where}")
            cursor = edit.pos
        else:
            line = f"{OPS[edit.op]}{quoted(edit.old)}{where}"
            parts.append(line + (f"{WITH}{quoted(edit.new)}" if edit.op == "rep" else ""))
            cursor = edit.pos + count_units(edit.old)
    return SEPARATOR.join(parts)


class _Reader:
    def __init__(self, text: str):
        self.text, self.at = text, 0

    def error(self, expected: str) -> EditFormatError:
        return EditFormatError(f"expected {expected} at character {self.at}, found {self.text[self.at:self.at + 20]!r}")

    def take(self, word: str) -> bool:
        if self.text.startswith(word, self.at):
            self.at += len(word)
            return True
        return False

    def string(self, what: str) -> str:
        if not self.text.startswith('"', self.at):
            raise self.error(f"{what} in double quotes")
        try:
            value, self.at = _DECODER.raw_decode(self.text, self.at)
        except json.JSONDecodeError as e:
            raise EditFormatError(f"{what} at character {self.at}: not a well-formed quoted text ({e.msg})") from None
        return unquoted(value)


Instruction = tuple[str, str, str, str, str]
"""(op, removed text, new text, place: "", "after", "before" or "end", anchor text)"""


def parse(text: str) -> list[Instruction]:
    """The instructions of a written chain, not yet placed in a source; malformed text raises
    :class:`EditFormatError` naming the problem and where."""
    if not text.strip():
        return []
    r, out = _Reader(text), []
    while True:
        op = _OP.match(text, r.at)
        if not op:
            raise r.error('" insert ", " delete " or " replace "')
        r.at = op.end()
        kind = {"insert": "ins", "delete": "del", "replace": "rep"}[op.group(1)]
        what = f"{op.group(1)} (instruction {len(out) + 1})"
        body = r.string(f"the text to {op.group(1)}")
        place, anchor = "", ""
        if r.take(AFTER):
            place, anchor = "after", r.string(f"the anchor of {what}")
        elif kind == "ins" and r.take(BEFORE):
            place, anchor = "before", r.string(f"the anchor of {what}")
        elif kind == "ins" and r.take(AT_END):
            place = "end"
        elif kind == "ins":
            raise r.error(f'" before ", " after " or " at the end" in {what}')
        new = r.string(f"the new text of {what}") if kind == "rep" and r.take(WITH) else ""
        if kind == "rep" and not new:
            raise r.error(f'" with " in {what}')
        out.append((kind, "" if kind == "ins" else body, body if kind == "ins" else new, place, anchor))
        if r.at == len(text):
            return out
        if not r.take(SEPARATOR):
            raise r.error(f'"{SEPARATOR}" or the end of the chain')


def locate(instructions: list[Instruction], source: str) -> EditChain:
    """The chain the instructions make in ``source``; a text or anchor not found from the cursor raises
    :class:`EditApplyError` naming it."""
    units = split_units(source)
    edits, cursor = [], 0
    for number, (op, old, new, place, anchor) in enumerate(instructions, start=1):
        if place == "end":
            pos: Optional[int] = len(units)
        elif op == "ins":
            pos = _first(units, cursor, "", anchor, before=place == "before")
        else:
            pos = _first(units, cursor, old, anchor)
        if pos is None:
            looked = f'{old.strip()!r}' if op != "ins" else "the place"
            near = f" {place} {anchor.strip()!r}" if place in ("after", "before") else ""
            raise EditApplyError(f"instruction {number} ({op}): {looked}{near} is not in the source after where "
                                 "the previous instruction ended")
        edits.append(Edit(op, pos, old, new))
        cursor = pos + count_units(old)
    return EditChain(tuple(edits))


def read(text: str, source: str) -> EditChain:
    """:func:`parse` then :func:`locate`."""
    return locate(parse(text), source)
