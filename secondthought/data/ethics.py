"""ETHICS (Hendrycks et al., 2021) subsets as unaligned -> aligned pairs.

- commonsense: adjacent short items with opposite labels (label 1 = wrong -> label 0).
- deontology: the same request, an unreasonable excuse -> a reasonable one.
- justice: consecutive claims that share their reason or their subject, unreasonable -> reasonable.
- utilitarianism (no header): the second scenario (less pleasant) -> the first (more pleasant).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from secondthought.config import DataConfig
from secondthought.data.pairing import consecutive_groups, pair_groups
from secondthought.data.records import RawRecord
from secondthought.data.schema import MissingField, Rejected, Triple, text_field

CONTEXTS = {
    "commonsense": "Commonsense morality: describe what a reasonable person would not consider wrong.",
    "deontology": "Deontology: give a reasonable excuse for not doing what was asked.",
    "justice": "Justice: make a claim that is fair and deserved.",
    "utilitarianism": "Utilitarianism: describe the outcome that leaves people better off.",
}


def _label(record: RawRecord) -> int:
    value = text_field(record, "label").strip()
    if value not in ("0", "1"):
        raise MissingField(f"field 'label' must be 0 or 1, got {value!r}")
    return int(value)


def _triple(subset: str, source: RawRecord, target: RawRecord, source_text: str, target_text: str,
            context: str | None = None) -> Triple:
    stem = Path(source.file).stem
    return Triple(
        id=f"ethics-{subset}:{stem}:{source.line}-{target.line}",
        dataset=f"ethics-{subset}",
        context=CONTEXTS[subset] if context is None else context,
        source=source_text.strip(),
        target=target_text.strip(),
        records=[source, target] if source is not target else [source],
        metadata=json.dumps({"unaligned": source.fields, "aligned": target.fields}, ensure_ascii=False),
    )


def _labelled(records: Iterator[RawRecord], rejected: list[Rejected],
              extra: Callable[[RawRecord], None] = lambda r: None) -> Iterator[tuple[RawRecord, bool]]:
    """(record, is_aligned) for records with a valid label; others go to ``rejected``."""
    for record in records:
        try:
            label = _label(record)
            extra(record)
        except MissingField as e:
            rejected.append(Rejected.of(record, str(e)))
            continue
        yield record, label


def _flush(rejected: list[Rejected]) -> Iterator[Rejected]:
    yield from rejected
    rejected.clear()


def commonsense(records: Iterator[RawRecord], cfg: DataConfig) -> Iterator[Triple | Rejected]:
    rejected: list[Rejected] = []
    held: tuple[RawRecord, int] | None = None
    for record, label in _labelled(records, rejected, lambda r: text_field(r, "input")):
        yield from _flush(rejected)
        if text_field(record, "is_short", required=False).strip().lower() == "false":
            if held:
                yield Rejected.of(held[0], "no adjacent short item with the opposite label")
                held = None
            yield Rejected.of(record, "long item (is_short=False): not part of a minimal pair")
            continue
        if held and held[1] != label:
            wrong, right = (held[0], record) if held[1] == 1 else (record, held[0])
            yield _triple("commonsense", wrong, right, text_field(wrong, "input"), text_field(right, "input"))
            held = None
            continue
        if held:
            yield Rejected.of(held[0], "no adjacent short item with the opposite label")
        held = (record, label)
    yield from _flush(rejected)
    if held:
        yield Rejected.of(held[0], "no adjacent short item with the opposite label")


def deontology(records: Iterator[RawRecord], cfg: DataConfig) -> Iterator[Triple | Rejected]:
    rejected: list[Rejected] = []

    def check(record: RawRecord) -> None:
        text_field(record, "scenario")
        text_field(record, "excuse")

    labelled = _labelled(records, rejected, check)
    groups = consecutive_groups(labelled, lambda a, b: a.fields["scenario"] == b.fields["scenario"])

    def make(bad: RawRecord, good: RawRecord) -> Triple:
        return _triple("deontology", bad, good, bad.fields["excuse"], good.fields["excuse"],
                       context=bad.fields["scenario"].strip())

    # keyed by the request itself: the same request may come back further down the file
    for item in pair_groups(groups, make, "no excuse of the opposite label for the same request",
                            key=lambda group: "ethics-deontology:" + group[0][0].fields["scenario"].strip()):
        yield from _flush(rejected)
        yield item
    yield from _flush(rejected)


def _claim_parts(text: str) -> tuple[str, str]:
    head, _, tail = text.partition(" because ")
    return head.strip(), tail.strip()


def justice(records: Iterator[RawRecord], cfg: DataConfig) -> Iterator[Triple | Rejected]:
    rejected: list[Rejected] = []
    labelled = _labelled(records, rejected, lambda r: text_field(r, "scenario"))

    def same(a: RawRecord, b: RawRecord) -> bool:
        (a_head, a_tail), (b_head, b_tail) = _claim_parts(a.fields["scenario"]), _claim_parts(b.fields["scenario"])
        return bool(a_tail) and bool(b_tail) and (a_head == b_head or a_tail == b_tail)

    def make(bad: RawRecord, good: RawRecord) -> Triple:
        return _triple("justice", bad, good, bad.fields["scenario"], good.fields["scenario"])

    for item in pair_groups(consecutive_groups(labelled, same), make,
                            "no claim of the opposite label with the same subject or reason next to it"):
        yield from _flush(rejected)
        yield item
    yield from _flush(rejected)


def utilitarianism(records: Iterator[RawRecord], cfg: DataConfig) -> Iterator[Triple | Rejected]:
    for record in records:
        try:
            better, worse = text_field(record, "0"), text_field(record, "1")
        except MissingField as e:
            yield Rejected.of(record, f"{e} (expected two columns: more pleasant, less pleasant)")
            continue
        yield _triple("utilitarianism", record, record, worse, better)
