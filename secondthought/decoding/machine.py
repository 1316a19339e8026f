"""The state machine behind decoding constrained to the source: at every step only tokens that keep the completion a
chain of edits that applies to its source (and, if asked, a target that is the chain's result) may be written.

Why not a grammar library (xgrammar, outlines): they compile a grammar before decoding, but here the grammar depends
on what the row has written so far (the cursor, and the forced target depends on the free text of the inserts). So
this is a small nondeterministic machine over the bytes of the vocabulary's tokens (``vocabulary.TokenTable``): a
row's state is a set of *items* (a literal still to write, a special token, free text, the end), each knowing what
follows it. Allowed tokens are those that feed at least one item; literal items only offer tokens inside themselves
(the tokenizer never merges across a word's leading whitespace, nor across a special token).

Every item answers the same questions (:class:`Item`): what it becomes when fed bytes or a special token, which
tokens it offers, how many tokens it still needs. A grammar (``tokens_grammar``, ``words_grammar``) is a subclass
of :class:`ChainMachine` that says which items start a new edit (``_markers``); the target, the end and the
machine's bookkeeping are shared. No Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch

from secondthought.chains.edits import DEL, INS, REP, WITH, Edit, EditChain, count_units, split_units
from secondthought.chains.text import TGT
from secondthought.decoding.vocabulary import TokenTable, partial_char

Then = Callable[[], list]


class Item:
    """One way a row's completion may go on. Subclasses are frozen dataclasses with ``chain``, the edits finished
    before it; these are the defaults."""

    opens = False
    """Leads to more removed text or another edit (left out when the row must close its chain)."""
    pending = b""
    """New text written that ``chain`` does not hold yet (the token reserve counts it)."""
    ends = False
    """The end-of-sequence token may come now."""

    def feed(self, m: "ChainMachine", data: bytes) -> list:
        """The items after writing the bytes of a regular token."""
        return []

    def feed_special(self, m: "ChainMachine", token: int) -> list:
        """The items after writing a special token."""
        return []

    def feed_token(self, m: "ChainMachine", token: int, data: Optional[bytes]) -> list:
        """The items after writing ``token`` (``data``: its bytes, None for a special token)."""
        return self.feed_special(m, token) if data is None else self.feed(m, data)

    def offer(self, m: "ChainMachine", width: int, closing: bool, left: Optional[int]
              ) -> tuple[list[int], Optional[torch.Tensor]]:
        """Tokens it takes next: ids, and a mask over ``width`` columns where free text takes many."""
        return [], None

    def reserve(self, m: "ChainMachine") -> int:
        """Tokens it still needs beyond the chain's result so far."""
        return m.count(self.pending)


@dataclass(frozen=True)
class Lit(Item):
    """Bytes that must come next, then what ``then`` gives."""

    rest: bytes
    then: Then
    chain: tuple[Edit, ...] = ()
    opens: bool = False
    pending: bytes = b""

    def feed(self, m: "ChainMachine", data: bytes) -> list:
        if self.rest.startswith(data):
            return [replace(self, rest=self.rest[len(data):])] if len(data) < len(self.rest) else self.then()
        if data.startswith(self.rest):  # runs on into what follows (text fed whole, e.g. a prefix)
            return [out for nxt in self.then() for out in nxt.feed(m, data[len(self.rest):])]
        return []

    def offer(self, m, width, closing, left):
        return m.table.prefix_tokens(self.rest) + m.crossing(self, closing), None


@dataclass(frozen=True)
class Special(Item):
    token: int
    then: Then
    chain: tuple[Edit, ...] = ()
    opens: bool = False

    def feed_special(self, m: "ChainMachine", token: int) -> list:
        return self.then() if self.token == token else []

    def offer(self, m, width, closing, left):
        return [self.token], None


@dataclass(frozen=True)
class Free(Item):
    """Free text: the new text of an insert or replace (``edit`` holds its kind, position and removed text), or
    the target (``edit`` None)."""

    chain: tuple[Edit, ...]
    edit: Optional[Edit]
    content: bytes = b""

    @property
    def ends(self) -> bool:
        return self.edit is None

    def feed(self, m: "ChainMachine", data: bytes) -> list:
        content = self.content + data
        if self.edit is not None and not content[:1].isspace():
            return []
        if b"<|" in content[max(0, len(self.content) - 1):]:
            return []
        return [Free(self.chain, self.edit, content)]

    def feed_special(self, m: "ChainMachine", token: int) -> list:
        then = m.free_specials(self).get(token)
        return then() if then is not None else []

    def offer(self, m, width, closing, left):
        table = m.table
        if closing:
            ends = m.free_specials(self)
            if self.edit is not None and self.content and table.special[TGT] in ends:
                return [table.special[TGT]], None
            if self.edit is None and left <= 1:
                return [table.eos], None
        kind = ("spaced" if not self.content and self.edit is not None
                else "no_pipe" if self.content.endswith(b"<") else "any")
        return list(m.free_specials(self)), table.free_mask(kind, width, partial_char(self.content))

    def reserve(self, m: "ChainMachine") -> int:
        if self.edit is None:
            return 0
        return max(0, m.count(self.content) - m.count(self.edit.old.encode(), exact=True))


@dataclass(frozen=True)
class ForcedTokens(Item):
    """A forced target: these token ids (the tokenizer's own spelling of it, as in training), then the end."""

    ids: tuple[int, ...]
    chain: tuple[Edit, ...] = ()

    def feed_token(self, m, token, data):
        if self.ids[0] != token:
            return []
        return [ForcedTokens(self.ids[1:], self.chain)] if len(self.ids) > 1 else [End()]

    def offer(self, m, width, closing, left):
        return [self.ids[0]], None


@dataclass(frozen=True)
class End(Item):
    """Only the end-of-sequence token."""

    chain = ()
    ends = True

    def offer(self, m, width, closing, left):
        return [m.table.eos], None


_SPECIAL = re.compile("|".join(re.escape(t) for t in (INS, DEL, REP, WITH, TGT)))


class ChainMachine:
    """One row's constraint: ``mask`` of the tokens it may write next, ``advance`` by the token it wrote. A grammar
    subclasses it and gives ``_markers`` (the items that start an edit after ``chain``)."""

    def __init__(self, table: TokenTable, source: str, force_target: bool = False, prefix: str = ""):
        self.table, self.source, self.force_target = table, source, force_target
        self.units = split_units(source)
        self._result_tokens: dict[tuple[Edit, ...], int] = {}
        self.items: list = self._markers(())
        self.record: Optional[list] = None
        """Set to a list, every mask is kept in it, bits packed (RL: the learner scores under the same masks)."""
        if prefix:
            self.feed_text(prefix)

    # --- what every grammar shares: the cursor, the target, the end -------------------------------------------
    def _markers(self, chain: tuple[Edit, ...]) -> list:
        raise NotImplementedError

    def crossing(self, item: Lit, closing: bool) -> list[int]:
        """Tokens that write the rest of a literal and run on into what follows it (none unless a grammar says)."""
        return []

    def _cursor(self, chain: tuple[Edit, ...]) -> int:
        if not chain:
            return 0
        last = chain[-1]
        return last.pos + count_units(last.old)

    def _changes(self, chain: tuple[Edit, ...]) -> bool:
        return EditChain(chain).apply(self.source).strip() != self.source.strip()

    def _target_marker(self, chain: tuple[Edit, ...]) -> list:
        return [Special(self.table.special[TGT], lambda: self._target(chain), chain)] if self._changes(chain) else []

    def _target(self, chain: tuple[Edit, ...]) -> list:
        if not self.force_target:
            return [Free(chain, None)]
        ids = tuple(self.table.encode(EditChain(chain).apply(self.source)))
        return [ForcedTokens(ids, chain)] if ids else [End()]

    def _finished(self, item: Free, separator: bool) -> Optional[tuple[Edit, ...]]:
        """The chain with the free text as the edit's new text (less the space before a next marker), or None
        when that is no edit's new text."""
        content = item.content[:-1] if separator else item.content
        if separator and not item.content.endswith(b" "):
            return None
        if not content:
            return None
        try:
            new = content.decode()
        except UnicodeDecodeError:
            return None
        edit = item.edit
        return item.chain + (Edit(edit.op, edit.pos, edit.old, new),)

    def free_specials(self, item: Free) -> dict[int, Then]:
        """Special tokens that may end free text, and what follows each."""
        special = self.table.special
        if item.edit is None:
            return {self.table.eos: lambda: []}
        out: dict[int, Then] = {}
        ended = self._finished(item, separator=True)
        if ended is not None:
            for m in self._markers(ended):
                out[m.token] = m.then
        ended = self._finished(item, separator=False)
        if ended is not None and self._changes(ended):
            out[special[TGT]] = lambda: self._target(ended)
        return out

    # --- the machine ------------------------------------------------------------------------------------------
    def advance(self, token: int) -> None:
        if token == self.table.eos:
            if not any(item.ends for item in self.items):
                raise ValueError("end of sequence written where the chain's grammar does not allow it")
            self.items = []
            return
        data = self.table.bytes_of[token] if token < self.table.size else None
        items = [out for item in self.items for out in item.feed_token(self, token, data)]
        if not items:
            raise ValueError(f"token {token} does not continue a chain that fits the source")
        self.items = items

    def taken(self, ids: list[int], feed: Callable[[bytes], list], closing: bool) -> list[int]:
        """The tokens of ``ids`` that ``feed`` takes; short of tokens, only those that do not lead into more chain
        alone (a quote that closes and runs on into "; delete ..."), where there are any."""
        led = [(i, items) for i in ids if (items := feed(self.table.bytes_of[i]))]
        settled = [i for i, items in led if any(not item.opens for item in items)]
        return settled if closing and settled else [i for i, _ in led]

    def reserve(self, items: list) -> int:
        """Tokens kept to close the chain and write the target: a few for <|tgt|> (after a replace's <|with|> and
        a word) and EOS, and the target's length: the tokens of the chain's result so far, and of the free text
        being written, not yet in it (forced or written by the model, a target cut short is not consistent)."""
        longest = 0
        for item in items:
            if item.chain not in self._result_tokens:
                self._result_tokens[item.chain] = len(self.table.encode(EditChain(item.chain).apply(self.source)))
            longest = max(longest, self._result_tokens[item.chain] + item.reserve(self))
        return 8 + longest

    def count(self, text: bytes, exact: bool = False) -> int:
        """Tokens of a piece of text (a character left half written counted whole); unless ``exact``, one for
        every 3 bytes where that is more: the slack that closing after long tokens takes."""
        count = len(self.table.encode(text.decode("utf-8", "replace"))) if text else 0
        return count if exact else max(len(text) // 3, count)

    def feed_text(self, text: str) -> None:
        """Advance by a piece of completion text (special tokens spelled out), e.g. a corrected prefix of edits."""
        pos = 0
        for match in list(_SPECIAL.finditer(text)) + [None]:
            end = match.start() if match else len(text)
            if end > pos:
                self.items = [out for item in self.items for out in item.feed(self, text[pos:end].encode())]
            if match:
                token = self.table.special[match.group()]
                self.items = [out for item in self.items for out in item.feed_special(self, token)]
                pos = match.end()
            if not self.items:
                raise ValueError(f"the text {text[:end][-40:]!r} does not continue a chain that fits the source")

    def mask(self, width: int, left: Optional[int] = None) -> torch.Tensor:
        """Boolean mask over ``width`` token columns: True where the token may come next. With ``left`` tokens to
        go, at most ``reserve`` of them, the row closes its chain (no new edit, no longer text) where it can, so
        that it still writes a target before decoding is cut."""
        closing = left is not None and left <= self.reserve(self.items)
        items = self.items
        if closing:
            items = [item for item in items if not item.opens] or items
        mask = torch.zeros(width, dtype=torch.bool)
        ids: list[int] = []
        for item in items:
            offered, free = item.offer(self, width, closing, left)
            ids += offered
            if free is not None:
                mask |= free
        if ids:
            mask[torch.tensor(ids, dtype=torch.long)] = True
        if self.record is not None:
            self.record.append(np.packbits(mask.numpy()))
        return mask
