"""Decoding constrained to the source for chains written in words (``chains.words``):

    (" insert " Q_new (" before " A | " after " A | " at the end") | " delete " Q_old [" after " A]
     | " replace " Q_old [" after " A] " with " Q_new) (";" ...)* <|tgt|> target <eos>

Removed text Q_old is some run of the source's units from the cursor on, written exactly as ``words.quoted``
writes it (the row picks where; the state keeps every start that its text still matches), an anchor A is a run
of source units that ends where such an occurrence starts (``after``) or starts at or after the cursor
(``before``), and new text is free text in a JSON string. Where an instruction lands is what
``words.locate`` makes of the text, so every chain decoded here reads back to a chain that applies.

The same machine as ``tokens_grammar`` (``machine.ChainMachine``: literals, the target, the end), with two items
of its own: ``_Quoted`` (free text in quotes) and ``_Span`` (quoted text that must be source units). Tokens with a quote or a
backslash (a few hundred) are tried one by one, so that a token that closes a quote and runs on (``."``, ``";``)
is allowed where the tokenizer writes it. No Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Optional

import torch

from secondthought.chains.edits import Edit, count_units
from secondthought.chains.words import AFTER, AT_END, BEFORE, OPS, SEPARATOR, WITH, _first, shown, unquoted
from secondthought.decoding.machine import ChainMachine, Item, Lit
from secondthought.decoding.vocabulary import keeps_utf8, partial_char

_QUOTE, _BACKSLASH = 0x22, 0x5C


def _escaped(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False)[1:-1].encode()


_ESCAPES = frozenset(b'"\\/bfnrt')
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _scan(data: bytes, escape: int) -> tuple[int, int]:
    """Where the first unescaped quote of ``data`` is (-1: none), and the escape ``data`` ends in: 0 none, -1 just
    after a backslash, k > 0 hex digits of a \\u escape still to come; (-2, 0) where an escape is malformed."""
    for k, byte in enumerate(data):
        if escape == -1:
            escape = 4 if byte == ord("u") else 0 if byte in _ESCAPES else -2
        elif escape > 0:  # \u0XXX, as the writer makes them (control characters): never half a surrogate pair
            escape = escape - 1 if byte in (_HEX if escape < 4 else b"0") else -2
        elif byte == _BACKSLASH:
            escape = -1
        elif byte == _QUOTE:
            return k, 0
        if escape == -2:
            return -2, 0
    return -1, escape


def _finishing(table, escape: int) -> list[int]:
    """Tokens that go on with an open escape (finishing it or not) and hold no quote or backslash after it."""
    key = ("finishing", escape)
    if key not in table.memo:
        escaping = set(table.escaping)
        table.memo[key] = [i for i, b in enumerate(table.bytes_of) if b and i not in escaping and min(b) >= 0x20
                           and b"<|" not in b and _scan(b, escape)[0] == -1]
    return table.memo[key]


def _open_escape(data: bytes) -> bool:
    """Whether quoted text ``data`` ends inside an escape (an odd run of backslashes)."""
    return (len(data) - len(data.rstrip(b"\\"))) % 2 == 1


def _json_text(data: bytes) -> Optional[str]:
    try:
        return json.loads(b'"' + data + b'"')
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class _Quoted(Item):
    """Free text in quotes: an insert's text (``edit.op == "ins"``, its place follows) or a replace's new text."""

    chain: tuple[Edit, ...]
    edit: Edit
    content: bytes = b""
    escape: int = 0

    @property
    def pending(self) -> bytes:
        """Text written and not yet in the chain's result (the token reserve counts it)."""
        return self.content

    def feed(self, m: "WordsConstraint", data: bytes) -> list:
        close, escape = _scan(data, self.escape)
        written = data if close < 0 else data[:close]
        if close == -2 or not keeps_utf8(partial_char(self.content), written):  # broken escape or UTF-8
            return []
        content = self.content + written
        if any(b < 0x20 for b in written) or b"<|" in content:
            return []
        if close < 0:
            return [replace(self, content=content, escape=escape)]
        text = _json_text(content) if content else None
        if not text:
            return []
        return m.run_on(m.closed(self, unquoted(text)), data[close + 1:])

    def closes(self, m: "WordsConstraint") -> bool:
        """Whether a quote may close the text now (it is some text, and no escape or character is left open)."""
        return not self.escape and bool(self.feed(m, b'"'))

    def offer(self, m, width, closing, left):
        return self._allowed(m, closing), self._free_mask(m, width, closing)

    def _allowed(self, m: "WordsConstraint", closing: bool) -> list[int]:
        if closing and self.closes(m):  # short of tokens, text that can close does
            return m.table.by_bytes.get(b'"', [])
        key = (self.edit.op, self.escape, bool(self.content), self.content.endswith(b"<"), partial_char(self.content),
               m._cursor(self.chain) < len(m.units))
        if self.escape:  # inside an escape: tokens that finish it (plain text's mask is off)
            tried = m.tried(key, self, [i for i in m.table.escaping
                                        if _scan(m.table.bytes_of[i], self.escape)[0] != -2])
        else:
            tried = m.tried(key, self, m.table.escaping)
        if closing:  # no quote that closes and runs on into a new edit
            tried = m.taken(tried, lambda data: self.feed(m, data), closing)
        return (_finishing(m.table, self.escape) if self.escape else []) + tried

    def _free_mask(self, m: "WordsConstraint", width: int, closing: bool) -> torch.Tensor:
        table = m.table
        if self.escape or (closing and self.closes(m)):
            return torch.zeros(width, dtype=torch.bool)
        mask = table.free_mask("quoted", width, partial_char(self.content))
        return mask & table.free_mask("no_pipe", width) if self.content.endswith(b"<") else mask


@dataclass(frozen=True)
class _Span(Item):
    """Quoted text that must be source units: removed text (``role`` "old") or an anchor ("after": ending where
    the edit goes; "before": starting there). ``starts``: unit index -> unit indices the text may end at."""

    chain: tuple[Edit, ...]
    edit: Edit
    role: str
    starts: tuple[tuple[int, frozenset], ...]
    written: bytes = b""

    def feed(self, m: "WordsConstraint", data: bytes) -> list:
        close, _ = _scan(data, -1 if _open_escape(self.written) else 0)  # its text is the source's, well escaped
        written = self.written + (data if close < 0 else data[:close])
        offsets = {j: m.offsets(j, ends) for j, ends in self.starts if m.rendered(j).startswith(written)}
        starts = tuple((j, ends) for j, ends in self.starts if j in offsets and len(written) <= max(offsets[j]))
        if close < 0:
            return [replace(self, starts=starts, written=written)] if starts else []
        if not any(len(written) in offsets[j] for j, _ in starts):
            return []
        return m.run_on(m.closed(self, unquoted(json.loads(b'"' + written + b'"'))), data[close + 1:])

    def _shortest(self, m: "WordsConstraint") -> bytes:
        """The shortest text still to write before the quote may close."""
        n = len(self.written)
        return min((m.rendered(j)[n : min(o for o in m.offsets(j, ends) if o >= n)] for j, ends in self.starts),
                   key=len, default=b"")

    def reserve(self, m: "WordsConstraint") -> int:
        """An insert's new text, not in the chain yet, and the shortest text still to write."""
        return m.count(self.edit.new.encode() + self._shortest(m))

    def offer(self, m, width, closing, left):
        n = len(self.written)
        offsets = [(j, m.offsets(j, ends)) for j, ends in self.starts]
        can_close = any(n in offs for _, offs in offsets)
        if closing:  # short of tokens, a span that can end does, and one that cannot takes the shortest way there
            rests = [] if can_close else [self._shortest(m)]
        else:
            rests = [m.rendered(j)[n : max(offs)] for j, offs in offsets]
        ids = {i for rest in rests for i in m.table.prefix_tokens(rest)}
        firsts = {rest[0] for rest in rests if rest} | ({_QUOTE} if can_close else set())
        tried = [i for b in firsts for i in m.table.escaping_by_first.get(b, ())]
        return list(ids) + m.taken([i for i in tried if i not in ids], lambda data: self.feed(m, data), closing), None


class WordsConstraint(ChainMachine):
    """One row's constraint for a model that writes chains in words."""

    def __init__(self, *args, **kwargs):
        self._tried: dict[tuple, list[int]] = {}
        self._rendered: dict[int, bytes] = {}
        self._offsets: dict[int, list[int]] = {}
        self._closed: dict[tuple, list] = {}
        self._runs: dict[tuple, tuple] = {}
        super().__init__(*args, **kwargs)

    # --- the source's units as quoted text -------------------------------------------------------------------
    def rendered(self, j: int) -> bytes:
        """Units j.. as quoted text (``words.quoted``, without the quotes)."""
        if j not in self._rendered:
            pieces = [_escaped(shown(self.units[j]))] + [_escaped(u) for u in self.units[j + 1:]]
            self._rendered[j] = b"".join(pieces)
            offsets, total = [], 0
            for piece in pieces:
                total += len(piece)
                offsets.append(total)
            self._offsets[j] = offsets
        return self._rendered[j]

    def offsets(self, j: int, ends: frozenset) -> set[int]:
        """Byte lengths of the quoted text of units j..e for each e in ``ends``."""
        self.rendered(j)
        return {self._offsets[j][e - j - 1] for e in ends}

    def _spans(self, starts: range, ends) -> tuple[tuple[int, frozenset], ...]:
        """(start, allowed ends) for each start, ``ends(j)`` giving the ends; starts without one left out."""
        out = tuple((j, frozenset(ends(j))) for j in starts)
        return tuple((j, e) for j, e in out if e)

    def _from(self, c: int) -> tuple[tuple[int, frozenset], ...]:
        """Runs of units that start at or after unit c."""
        n = len(self.units)
        if ("from", c) not in self._runs:
            self._runs["from", c] = self._spans(range(c, n), lambda j: range(j + 1, n + 1))
        return self._runs["from", c]

    def _to(self, c: int) -> tuple[tuple[int, frozenset], ...]:
        """Runs of units that end at or after unit c (and after their start)."""
        n = len(self.units)
        if ("to", c) not in self._runs:
            self._runs["to", c] = self._spans(range(n), lambda j: range(max(c, j + 1), n + 1))
        return self._runs["to", c]

    # --- the grammar ----------------------------------------------------------------------------------------
    def _markers(self, chain: tuple[Edit, ...]) -> list:
        c, n = self._cursor(chain), len(self.units)
        items = [Lit(OPS["ins"].encode() + b'"', lambda: [_Quoted(chain, Edit("ins", -1))], chain, opens=True)]
        if c < n:
            for op in ("del", "rep"):
                starts = self._from(c)
                items.append(Lit(OPS[op].encode() + b'"',
                                  lambda op=op, starts=starts: [_Span(chain, Edit(op, -1), "old", starts)],
                                  chain, opens=True))
        return items

    def _done(self, chain: tuple[Edit, ...]) -> list:
        return [Lit(SEPARATOR.encode(), lambda: self._markers(chain), chain, opens=True)] + self._target_marker(chain)

    def _located(self, chain: tuple[Edit, ...], edit: Edit) -> list:
        if edit.op == "rep":
            return [Lit(WITH.encode() + b'"', lambda: [_Quoted(chain, edit)], chain)]
        return self._done(chain + (edit,))

    def closed(self, item, text: str) -> list:
        """What may follow a closed quote: the same for every token that closes it (tried by the hundred)."""
        key = (item.chain, item.edit, getattr(item, "role", "new"), text)
        if key not in self._closed:
            self._closed[key] = (self._span_closed if isinstance(item, _Span) else self._quoted_closed)(item, text)
        return self._closed[key]

    def _quoted_closed(self, item: _Quoted, text: str) -> list:
        chain, edit, c, n = item.chain, item.edit, self._cursor(item.chain), len(self.units)
        if edit.op == "rep":
            return self._done(chain + (replace(edit, new=text),))
        ins, new = Edit("ins", -1, "", text), text.encode()
        before, after = self._from(c), self._to(c)
        items = [Lit(AT_END.encode(), lambda: self._done(chain + (replace(ins, pos=n),)), chain, pending=new)]
        if before:  # an anchor "opens": short of tokens, the insert goes at the end
            items.append(Lit(BEFORE.encode() + b'"', lambda: [_Span(chain, ins, "before", before)], chain,
                              opens=True, pending=new))
        if after:
            items.append(Lit(AFTER.encode() + b'"', lambda: [_Span(chain, ins, "after", after)], chain,
                              opens=True, pending=new))
        return items

    def _span_closed(self, item: _Span, text: str) -> list:
        chain, edit, c = item.chain, item.edit, self._cursor(item.chain)
        if item.role == "old":
            n = count_units(text)
            found = [i for i in range(c, len(self.units) - n + 1) if "".join(self.units[i : i + n]) == text]
            edit = replace(edit, old=text)
            starts = self._spans(range(max(found)), lambda j: (i for i in found if i > j))
            items = self._located(chain, replace(edit, pos=found[0]))
            if starts:
                items.append(Lit(AFTER.encode() + b'"', lambda: [_Span(chain, edit, "after", starts)], chain,
                                  opens=True))
            return items
        pos = _first(self.units, c, edit.old, text, before=item.role == "before")
        return self._located(chain, replace(edit, pos=pos))

    # --- the machine's hooks ----------------------------------------------------------------------------------
    def reserve(self, items: list) -> int:
        """As for edit tokens, and room for a closing quote, " with " and a word of new text."""
        return super().reserve(items) + 8

    def run_on(self, items: list, rest: bytes) -> list:
        """``items`` after a quote closed, fed what the same token wrote after it."""
        return [out for item in items for out in item.feed(self, rest)] if rest else items

    def tried(self, key: tuple, item, candidates: list[int]) -> list[int]:
        """Of ``candidates``, the tokens ``item`` takes, tried one by one (cached under ``key``)."""
        if key not in self._tried:
            self._tried[key] = [i for i in candidates if item.feed(self, self.table.bytes_of[i])]
        return self._tried[key]

    def crossing(self, item: Lit, closing: bool) -> list[int]:
        if len(item.rest) > 2:
            return []
        longer = [i for i in self.table.escaping_by_first.get(item.rest[0], ())
                  if len(self.table.bytes_of[i]) > len(item.rest)]
        return self.taken(longer, lambda data: item.feed(self, data), closing)
