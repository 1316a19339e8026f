"""Decoding constrained to the source: at every step only tokens that keep the completion a chain of edits that
applies to its source (and, if asked, a target that is the chain's result) may be written.

The grammar of a completion (``formatting``, ``edits.serialize``) with the source's units U:

    edit (" " edit)* <|tgt|> target <eos>
    edit = <|ins|> " p" new | <|del|> " p" U[p..q] | <|rep|> " p" U[p..q] " " <|with|> new

where a position p is at least where the previous edit ended (an insert up to len(U), a delete or replace
below it), the removed text is the source's own units there (forced, not sampled), new text is free text that
starts with whitespace and holds no marker, at least one edit comes before ``<|tgt|>`` and the chain must
change the source. With ``force_target`` the target is forced to ``apply(source, chain)`` as the tokenizer spells
it (the training text's tokens), else free text.

Why not a grammar library (xgrammar, outlines): they compile a grammar before decoding, but here the grammar
depends on what the row has written so far (the cursor, and the forced target depends on the free text of the
inserts). So this is a small nondeterministic state machine over the bytes of the vocabulary's tokens: a row's
state is a set of *items* (a literal still to write, a special token, free text, the end), each knowing what
follows it. Allowed tokens are those that feed at least one item; literal items only offer tokens inside
themselves (the tokenizer never merges across a word's leading whitespace, nor across a special token).
Needs a byte-level BPE tokenizer (GPT-2 style, e.g. SmolLM2's). No Ray.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from secondthought.edits import DEL, INS, REP, WITH, Edit, EditChain, count_units, join_units, split_units
from secondthought.formatting import TGT

Then = Callable[[], list]


class UnsupportedTokenizer(ValueError):
    """Constrained decoding cannot read this tokenizer's vocabulary as bytes."""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (each byte shown as a printable character), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _partial(data: bytes) -> bytes:
    """The bytes of the UTF-8 character ``data`` ends inside (b"" when it ends on a boundary)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:
            size = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return data[-back:] if size > back else b""
    return b""


def _keeps_utf8(partial: bytes, data: bytes) -> bool:
    """Whether text that ends inside the character ``partial`` (b"": on a boundary) stays valid UTF-8 with ``data``
    added, and can end: a character it leaves unfinished can still be finished."""
    try:
        _, used = codecs.utf_8_decode(partial + data, "strict", False)
    except UnicodeDecodeError:
        return False
    return _can_finish((partial + data)[used:])


@lru_cache(maxsize=None)
def _can_finish(start: bytes) -> bool:
    """Whether some continuation bytes finish the character ``start`` begins (not, e.g., a surrogate half's start,
    which Python's incremental decoder lets through)."""
    if not start:
        return True
    try:
        _, used = codecs.utf_8_decode(start, "strict", False)
    except UnicodeDecodeError:
        return False
    return used == len(start) or (len(start) < 4 and any(_can_finish(start + bytes([b])) for b in range(0x80, 0xC0)))


class TokenTable:
    """A tokenizer's vocabulary as bytes, and the masks free text uses (built once per tokenizer)."""

    def __init__(self, tokenizer):
        decoder = type(getattr(tokenizer.backend_tokenizer, "decoder", None)).__name__
        if decoder != "ByteLevel":
            raise UnsupportedTokenizer(f"constrained decoding needs a byte-level BPE tokenizer (GPT-2 style); this one "
                                       f"decodes with {decoder}: use --eval.decoding free / serve.decoding free")
        to_byte = _byte_decoder()
        added = set(tokenizer.added_tokens_decoder)
        self.size = len(tokenizer)
        self.bytes_of: list[Optional[bytes]] = [None] * self.size
        self.by_bytes: dict[bytes, list[int]] = {}
        for token, i in tokenizer.get_vocab().items():
            if i in added or i >= self.size:
                continue
            b = bytes(to_byte[c] for c in token)
            self.bytes_of[i] = b
            self.by_bytes.setdefault(b, []).append(i)
        self.max_len = max(len(b) for b in self.by_bytes)
        ids = tokenizer.convert_tokens_to_ids
        self.special = {name: ids(name) for name in (INS, DEL, REP, WITH, TGT)}
        self.eos = tokenizer.eos_token_id
        self.encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids
        regular = [b is not None for b in self.bytes_of]
        self._free = torch.tensor([r and b"<|" not in b for r, b in zip(regular, self.bytes_of)])
        self._spaced = self._free & torch.tensor([bool(b) and b[:1].isspace() for b in self.bytes_of])
        self._no_pipe = self._free & torch.tensor([not (b or b"").startswith(b"|") for b in self.bytes_of])
        # inside a quoted (JSON) string: no quote, backslash or control byte; those tokens are checked one by one
        plain = [b is not None and not any(c in b for c in b'"\\') and min(b or b"a") >= 0x20 for b in self.bytes_of]
        self._quoted = self._free & torch.tensor(plain)
        self.escaping = [i for i, b in enumerate(self.bytes_of)
                         if b is not None and (b'"' in b or b"\\" in b) and min(b) >= 0x20 and b"<|" not in b]
        self.escaping_by_first: dict[int, list[int]] = {}
        for i in self.escaping:
            self.escaping_by_first.setdefault(self.bytes_of[i][0], []).append(i)
        self._utf8: dict[bytes, torch.Tensor] = {}
        self._masks: dict[tuple[str, int, bytes], torch.Tensor] = {}
        self.memo: dict = {}
        """A grammar's own per-tokenizer tables (constrained_words)."""

    def free_mask(self, kind: str, width: int, partial: bytes = b"") -> torch.Tensor:
        """Regular tokens free text may take next: "any", "spaced" (starts with whitespace), "no_pipe" (after a
        '<', so that no '<|' is ever written), "quoted" (in a JSON string: none with a quote, backslash or control
        byte); ``width`` columns (a model's vocabulary may be padded). Free text stays valid UTF-8 that can end:
        text that ends inside a character (its bytes so far: ``partial``) takes only tokens that go on with it,
        and no text takes a byte that cannot be UTF-8 (a random or untrained model writes such tokens)."""
        key = (kind, width, partial)
        if key not in self._masks:
            if partial not in self._utf8:
                self._utf8[partial] = torch.tensor([b is not None and _keeps_utf8(partial, b) for b in self.bytes_of])
            base = {"any": self._free, "spaced": self._spaced, "no_pipe": self._no_pipe, "quoted": self._quoted}[kind]
            mask = torch.zeros(width, dtype=torch.bool)
            mask[: self.size] = (base & self._utf8[partial])[:width]
            self._masks[key] = mask
        return self._masks[key]

    def prefix_tokens(self, rest: bytes) -> list[int]:
        """Regular tokens whose bytes begin ``rest``."""
        return [i for n in range(1, min(len(rest), self.max_len) + 1) for i in self.by_bytes.get(rest[:n], ())]


@dataclass(frozen=True)
class _Lit:
    rest: bytes
    then: Then
    chain: tuple[Edit, ...] = ()
    """The edits finished before it."""
    opens: bool = False
    """Leads to more removed text or another edit (left out when the row must close its chain)."""
    pending: bytes = b""
    """New text written that ``chain`` does not hold yet (an insert's, before its place is written)."""


@dataclass(frozen=True)
class _Special:
    token: int
    then: Then
    chain: tuple[Edit, ...] = ()
    opens: bool = False


@dataclass(frozen=True)
class _Free:
    """Free text: the new text of an insert or replace (``edit`` holds its kind, position and removed text), or
    the target (``edit`` None)."""

    chain: tuple[Edit, ...]
    edit: Optional[Edit]
    content: bytes = b""


@dataclass(frozen=True)
class _Tokens:
    """A forced target: these token ids (the tokenizer's own spelling of it, as in training), then the end."""

    ids: tuple[int, ...]
    chain: tuple[Edit, ...] = ()


@dataclass(frozen=True)
class _End:
    """Only the end-of-sequence token."""


_SPECIAL = re.compile("|".join(re.escape(t) for t in (INS, DEL, REP, WITH, TGT)))


class ChainConstraint:
    """One row's constraint: ``mask`` of the tokens it may write next, ``advance`` by the token it wrote."""

    def __init__(self, table: TokenTable, source: str, force_target: bool = False, prefix: str = ""):
        self.table, self.source, self.force_target = table, source, force_target
        self.units = split_units(source)
        self._result_tokens: dict[tuple[Edit, ...], int] = {}
        self.items: list = self._markers(())
        self.record: Optional[list] = None
        """Set to a list, every mask is kept in it, bits packed (RL: the learner scores under the same masks)."""
        if prefix:
            self.feed_text(prefix)

    # --- the grammar: what may follow what --------------------------------------------------------------------
    def _cursor(self, chain: tuple[Edit, ...]) -> int:
        if not chain:
            return 0
        last = chain[-1]
        return last.pos + count_units(last.old)

    def _markers(self, chain: tuple[Edit, ...]) -> list:
        special = self.table.special
        items = [_Special(special[INS], lambda: self._positions(chain, "ins"), chain, opens=True)]
        if self._cursor(chain) < len(self.units):
            items += [_Special(special[DEL], lambda: self._positions(chain, "del"), chain, opens=True),
                      _Special(special[REP], lambda: self._positions(chain, "rep"), chain, opens=True)]
        return items

    def _positions(self, chain: tuple[Edit, ...], op: str) -> list:
        last = len(self.units) if op == "ins" else len(self.units) - 1
        return [_Lit(f" {p}".encode(), self._after_position(chain, op, p), chain)
                for p in range(self._cursor(chain), last + 1)]

    def _after_position(self, chain: tuple[Edit, ...], op: str, p: int) -> Then:
        if op == "ins":
            return lambda: [_Free(chain, Edit("ins", p))]
        return lambda: [_Lit(self.units[p].encode(), lambda: self._removed(chain, op, p, 1), chain)]

    def _removed(self, chain: tuple[Edit, ...], op: str, p: int, span: int) -> list:
        """After ``span`` source units from ``p`` were written as removed text: one more, or the end of it."""
        items = []
        if p + span < len(self.units):
            items.append(_Lit(self.units[p + span].encode(), lambda: self._removed(chain, op, p, span + 1), chain,
                              opens=True))
        old = "".join(self.units[p : p + span])
        if op == "rep":
            items.append(_Lit(b" ", lambda: [_Special(self.table.special[WITH],
                                                      lambda: [_Free(chain, Edit("rep", p, old))], chain)], chain))
        else:
            done = chain + (Edit("del", p, old),)
            items.append(_Lit(b" ", lambda: self._markers(done), done, opens=True))
            items += self._target_marker(done)
        return items

    def _changes(self, chain: tuple[Edit, ...]) -> bool:
        return EditChain(chain).apply(self.source).strip() != self.source.strip()

    def _target_marker(self, chain: tuple[Edit, ...]) -> list:
        return [_Special(self.table.special[TGT], lambda: self._target(chain), chain)] if self._changes(chain) else []

    def _target(self, chain: tuple[Edit, ...]) -> list:
        if not self.force_target:
            return [_Free(chain, None)]
        ids = tuple(self.table.encode(EditChain(chain).apply(self.source)))
        return [_Tokens(ids, chain)] if ids else [_End()]

    def _finished(self, item: _Free, separator: bool) -> Optional[tuple[Edit, ...]]:
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

    def _free_specials(self, item: _Free) -> dict[int, Then]:
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

    # --- the state machine ----------------------------------------------------------------------------------------
    def _feed_bytes(self, item, data: bytes) -> list:
        if hasattr(item, "feed"):  # an item of another grammar (constrained_words)
            return item.feed(data)
        if isinstance(item, _Lit):
            if item.rest.startswith(data):
                return [replace(item, rest=item.rest[len(data):])] if len(data) < len(item.rest) else item.then()
            if data.startswith(item.rest):  # runs on into what follows (text fed whole, e.g. a prefix)
                return [out for nxt in item.then() for out in self._feed_bytes(nxt, data[len(item.rest):])]
            return []
        if isinstance(item, _Free):
            content = item.content + data
            if item.edit is not None and not content[:1].isspace():
                return []
            if b"<|" in content[max(0, len(item.content) - 1):]:
                return []
            return [_Free(item.chain, item.edit, content)]
        return []

    def _feed_special(self, item, token: int) -> list:
        if isinstance(item, _Special):
            return item.then() if item.token == token else []
        if isinstance(item, _Free):
            then = self._free_specials(item).get(token)
            return then() if then is not None else []
        return []

    def _feed(self, token: int) -> list:
        data = self.table.bytes_of[token] if token < self.table.size else None
        out = []
        for item in self.items:
            if isinstance(item, _Tokens):
                if item.ids[0] == token:
                    out += [_Tokens(item.ids[1:], item.chain)] if len(item.ids) > 1 else [_End()]
            elif data is None:
                out += self._feed_special(item, token)
            else:
                out += self._feed_bytes(item, data)
        return out

    def advance(self, token: int) -> None:
        if token == self.table.eos:
            if not any(isinstance(i, _End) or (isinstance(i, _Free) and i.edit is None) for i in self.items):
                raise ValueError("end of sequence written where the chain's grammar does not allow it")
            self.items = []
            return
        items = self._feed(token)
        if not items:
            raise ValueError(f"token {token} does not continue a chain that fits the source")
        self.items = items

    def _crossing(self, item: _Lit, closing: bool) -> list[int]:
        """Tokens that write the rest of a literal and run on into what follows it (none in this grammar)."""
        return []

    def taken(self, ids: list[int], feed: Callable[[bytes], list], closing: bool) -> list[int]:
        """The tokens of ``ids`` that ``feed`` takes; short of tokens, only those that do not lead into more chain
        alone (a quote that closes and runs on into "; delete ..."), where there are any."""
        led = [(i, items) for i in ids if (items := feed(self.table.bytes_of[i]))]
        settled = [i for i, items in led if any(not getattr(item, "opens", False) for item in items)]
        return settled if closing and settled else [i for i, _ in led]

    def reserve(self, items: list) -> int:
        """Tokens kept to close the chain and write the target: a few for <|tgt|> (after a replace's <|with|> and
        a word) and EOS, and the target's length: the tokens of the chain's result so far, and of the free text
        being written, not yet in it (forced or written by the model, a target cut short is not consistent)."""
        longest = 0
        for item in items:
            chain = getattr(item, "chain", ())
            if chain not in self._result_tokens:
                self._result_tokens[chain] = len(self.table.encode(EditChain(chain).apply(self.source)))
            size = self._result_tokens[chain]
            if isinstance(item, _Free) and item.edit is not None:
                size += max(0, self._count(item.content) - self._count(item.edit.old.encode(), exact=True))
            size += self._count(getattr(item, "pending", b""))
            longest = max(longest, size)
        return 8 + longest

    def _count(self, text: bytes, exact: bool = False) -> int:
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
                self.items = [out for item in self.items for out in self._feed_bytes(item, text[pos:end].encode())]
            if match:
                self.items = [out for item in self.items for out in self._feed_special(item,
                                                                                       self.table.special[match.group()])]
                pos = match.end()
            if not self.items:
                raise ValueError(f"the text {text[:end][-40:]!r} does not continue a chain that fits the source")

    def mask(self, width: int, left: Optional[int] = None) -> torch.Tensor:
        """Boolean mask over ``width`` token columns: True where the token may come next. With ``left`` tokens to
        go, at most ``reserve`` of them, the row closes its chain (no new edit, no longer text) where it can, so
        that it still writes a target before decoding is cut."""
        table = self.table
        closing = left is not None and left <= self.reserve(self.items)
        items = self.items
        if closing:
            items = [item for item in items if not getattr(item, "opens", False)] or items
        mask = torch.zeros(width, dtype=torch.bool)
        ids: list[int] = []
        for item in items:
            if isinstance(item, _Free) and closing:
                ends = self._free_specials(item)
                if item.edit is not None and item.content and table.special[TGT] in ends:
                    ids.append(table.special[TGT])
                    continue
                if item.edit is None and left <= 1:
                    ids.append(table.eos)
                    continue
            if hasattr(item, "allowed"):
                ids += item.allowed(closing)
                if hasattr(item, "free_mask"):
                    mask |= item.free_mask(width, closing)
            elif isinstance(item, _Lit):
                ids += table.prefix_tokens(item.rest) + self._crossing(item, closing)
            elif isinstance(item, _Special):
                ids.append(item.token)
            elif isinstance(item, _End):
                ids.append(table.eos)
            elif isinstance(item, _Tokens):
                ids.append(item.ids[0])
            else:
                kind = ("spaced" if not item.content and item.edit is not None
                        else "no_pipe" if item.content.endswith(b"<") else "any")
                mask |= table.free_mask(kind, width, _partial(item.content))
                ids += list(self._free_specials(item))
        if ids:
            mask[torch.tensor(ids, dtype=torch.long)] = True
        if self.record is not None:
            self.record.append(np.packbits(mask.numpy()))
        return mask


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

    def constraints(self, sources: Sequence[str], how: Constrain, prefixes: Optional[Sequence[str]] = None,
                    edit_format: str = "tokens") -> list[ChainConstraint]:
        """One constraint per source for a model that writes chains in ``edit_format``."""
        from secondthought.constrained_words import WordsConstraint

        kind = WordsConstraint if edit_format == "words" else ChainConstraint
        return [kind(self.table, source, how.force_target, prefixes[k] if prefixes else "")
                for k, source in enumerate(sources)]
