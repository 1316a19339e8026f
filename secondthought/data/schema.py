"""The canonical triple every adapter produces, its checks, and the rejected-record report."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

from secondthought.chains.text import reserved_token
from secondthought.data.records import RawRecord

_SPLIT_NAMES = {"train": "train", "dev": "eval", "val": "eval", "valid": "eval", "validation": "eval",
                "eval": "eval", "test": "test"}


@dataclass
class Triple:
    """context + source (unaligned) -> target (aligned), and the input records it was made of."""

    id: str
    dataset: str
    context: str
    source: str
    target: str
    records: list[RawRecord]
    metadata: str = "{}"
    """The original fields, as a JSON object."""
    split: str | None = None
    group: str | None = None
    """Triples sharing a group (an ETHICS request, a MIC question and rule) share a split: else a test
    triple's context or source could be trained on. None: the triple is its own group."""


@dataclass(frozen=True)
class Rejected:
    """One input record left out, and why."""

    file: str
    line: int
    reason: str
    raw: str

    @staticmethod
    def of(record: RawRecord, reason: str) -> "Rejected":
        return Rejected(record.file, record.line, reason, record.raw)

    def to_json(self) -> str:
        return json.dumps({"file": self.file, "line": self.line, "reason": self.reason, "raw": self.raw},
                          ensure_ascii=False)


class MissingField(ValueError):
    pass


def text_field(record: RawRecord, name: str, required: bool = True) -> str:
    """A text field of a record; a missing or non-text required field raises MissingField."""
    value = record.fields.get(name) if record.fields else None
    if value is None or (isinstance(value, float) and math.isnan(value)):  # pandas-style missing
        if required:
            raise MissingField(f"missing field '{name}'")
        return ""
    if not isinstance(value, str):
        raise MissingField(f"field '{name}' is {type(value).__name__}, not text")
    return value


def id_field(record: RawRecord, name: str) -> str:
    """An optional id: text, or a whole number (JSON and Parquet ids are often numbers)."""
    value = record.fields.get(name) if record.fields else None
    if isinstance(value, bool):
        raise MissingField(f"field '{name}' is bool, not an id")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return text_field(record, name, required=False).strip()


def normalize_split(value: str | None) -> str | None:
    return _SPLIT_NAMES.get(value.strip().lower()) if value else None


def hashed_split(key: str, eval_fraction: float, test_fraction: float) -> str:
    """A stable split from a hash of ``key``: the same id always lands in the same split."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < test_fraction:
        return "test"
    return "eval" if u < test_fraction + eval_fraction else "train"


def judge_held_out(key: str) -> bool:
    """Training triples kept for the evaluation judge (a stable half, by another hash than the splits):
    the RL stage neither prompts with them nor shows them to its discriminator."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"judge").digest()[0] % 2 == 1


def problem(triple: Triple, max_chars: int) -> str | None:
    """Why a triple cannot be used, or None."""
    for name in ("context", "source", "target"):
        text = getattr(triple, name)
        if name != "context" and not text.strip():
            return f"empty {name}"
        if len(text) > max_chars:
            return f"{name} too long ({len(text)} characters > max_chars {max_chars})"
        if token := reserved_token(text):
            return f"{name} contains the reserved token {token}"
    if triple.source == triple.target:
        return "source and target are identical: nothing to edit"
    return None


def check_all(items: Iterable[Triple | Rejected], max_chars: int) -> Iterator[Triple | Rejected]:
    """Pass good triples on; turn bad ones into one Rejected per input record."""
    for item in items:
        if isinstance(item, Triple):
            reason = problem(item, max_chars)
            if reason:
                for record in item.records:
                    yield Rejected.of(record, reason)
                continue
        yield item
