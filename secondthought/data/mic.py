"""MIC, the Moral Integrity Corpus (Ziems et al., 2022), in its released CSV columns.

For one question and rule of thumb (RoT), a chatbot answer that disagrees with the RoT
(A_agrees = 0) is paired with one that agrees (A_agrees = 2). Neutral answers (1) are left out.
"""

from __future__ import annotations

import json
from typing import Iterator

from secondthought.config import DataConfig
from secondthought.data.pairing import pair_groups
from secondthought.data.records import RawRecord
from secondthought.data.schema import MissingField, Rejected, Triple, normalize_split, text_field

COLUMNS = ("chatbot", "Q", "A", "rot", "moral", "A_agrees", "rot-agree", "violation-severity", "split")


def adapt(records: Iterator[RawRecord], cfg: DataConfig) -> Iterator[Triple | Rejected]:
    groups: dict[tuple[str, str], list[tuple[RawRecord, bool]]] = {}
    for record in records:
        try:
            question, rot = text_field(record, "Q").strip(), text_field(record, "rot").strip()
            text_field(record, "A")
            agrees = text_field(record, "A_agrees").strip().split(".")[0]
        except MissingField as e:
            yield Rejected.of(record, str(e))
            continue
        if agrees not in ("0", "2"):
            reason = "answer is neutral to the rule of thumb (A_agrees=1)" if agrees == "1" else (
                f"field 'A_agrees' must be 0, 1 or 2, got {agrees!r}")
            yield Rejected.of(record, reason)
            continue
        groups.setdefault((question, rot), []).append((record, agrees == "2"))

    def make(bad: RawRecord, good: RawRecord, split: str | None) -> Triple:
        fields = bad.fields
        return Triple(
            id=f"mic:{bad.line}-{good.line}",
            dataset="mic",
            context=f"{fields['rot'].strip()} {fields['Q'].strip()}",
            source=fields["A"].strip(),
            target=good.fields["A"].strip(),
            records=[bad, good],
            metadata=json.dumps({"unaligned": fields, "aligned": good.fields}, ensure_ascii=False),
            split=split,
        )

    for (question, rot), group in groups.items():
        # the released split where every answer of the group has the same one; else a hash of the group
        splits = {normalize_split(record.fields.get("split")) for record, _ in group}
        split = splits.pop() if len(splits) == 1 else None
        yield from pair_groups([group], lambda bad, good, split=split: make(bad, good, split),
                               "no answer of the opposite stance for the same question and rule",
                               key=lambda _, q=question, r=rot: f"mic:{q}\n{r}")
