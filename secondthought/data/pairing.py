"""Make triples from pairs of records: one unaligned, one aligned, that belong together."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from secondthought.data.records import RawRecord
from secondthought.data.schema import Rejected, Triple

MakeTriple = Callable[[RawRecord, RawRecord], Triple]


def pair_groups(
    groups: Iterable[list[tuple[RawRecord, bool]]], make: MakeTriple, unpaired: str,
    key: Callable[[list[tuple[RawRecord, bool]]], str] | None = None,
) -> Iterator[Triple | Rejected]:
    """Within each group of (record, is_aligned), pair unaligned with aligned records in order. The
    triples of a group share its ``key`` (default: where its first record is), and so a split."""
    for group in groups:
        bad = [r for r, aligned in group if not aligned]
        good = [r for r, aligned in group if aligned]
        group_key = key(group) if key else f"{group[0][0].file}:{group[0][0].line}"
        for source, target in zip(bad, good):
            triple = make(source, target)
            triple.group = group_key
            yield triple
        for record in bad[len(good):] + good[len(bad):]:
            yield Rejected.of(record, unpaired)


def consecutive_groups(
    items: Iterable[tuple[RawRecord, bool]], same_group: Callable[[RawRecord, RawRecord], bool]
) -> Iterator[list[tuple[RawRecord, bool]]]:
    """Runs of consecutive items for which ``same_group(previous, current)`` holds."""
    group: list[tuple[RawRecord, bool]] = []
    for item in items:
        if group and not same_group(group[-1][0], item[0]):
            yield group
            group = []
        group.append(item)
    if group:
        yield group
