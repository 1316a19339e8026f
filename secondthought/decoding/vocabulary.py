"""A tokenizer's vocabulary as bytes, for decoding constrained to the source: which token writes which bytes, and
which tokens free text may take next (valid UTF-8 that can end, no edit marker). Needs a byte-level BPE tokenizer
(GPT-2 style, e.g. SmolLM2's). No Ray.
"""

from __future__ import annotations

import codecs
from functools import lru_cache
from typing import Optional

import torch

from secondthought.chains.edits import DEL, INS, REP, WITH
from secondthought.chains.text import TGT


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


def partial_char(data: bytes) -> bytes:
    """The bytes of the UTF-8 character ``data`` ends inside (b"" when it ends on a boundary)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:
            size = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return data[-back:] if size > back else b""
    return b""


def keeps_utf8(partial: bytes, data: bytes) -> bool:
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
        """A grammar's own per-tokenizer tables (words_grammar)."""

    def free_mask(self, kind: str, width: int, partial: bytes = b"") -> torch.Tensor:
        """Regular tokens free text may take next: "any", "spaced" (starts with whitespace), "no_pipe" (after a
        '<', so that no '<|' is ever written), "quoted" (in a JSON string: none with a quote, backslash or control
        byte); ``width`` columns (a model's vocabulary may be padded). Free text stays valid UTF-8 that can end:
        text that ends inside a character (its bytes so far: ``partial``) takes only tokens that go on with it,
        and no text takes a byte that cannot be UTF-8 (a random or untrained model writes such tokens)."""
        key = (kind, width, partial)
        if key not in self._masks:
            if partial not in self._utf8:
                self._utf8[partial] = torch.tensor([b is not None and keeps_utf8(partial, b) for b in self.bytes_of])
            base = {"any": self._free, "spaced": self._spaced, "no_pipe": self._no_pipe, "quoted": self._quoted}[kind]
            mask = torch.zeros(width, dtype=torch.bool)
            mask[: self.size] = (base & self._utf8[partial])[:width]
            self._masks[key] = mask
        return self._masks[key]

    def prefix_tokens(self, rest: bytes) -> list[int]:
        """Regular tokens whose bytes begin ``rest``."""
        return [i for n in range(1, min(len(rest), self.max_len) + 1) for i in self.by_bytes.get(rest[:n], ())]
