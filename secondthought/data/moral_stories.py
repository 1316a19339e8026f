"""Moral Stories (Emelin et al., 2021): norm + situation + intention, immoral -> moral action."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from secondthought.config import DataConfig
from secondthought.data.records import RawRecord
from secondthought.data.schema import MissingField, Rejected, Triple, id_field, normalize_split, text_field


def adapt(records: Iterator[RawRecord], cfg: DataConfig, dataset: str = "moral-stories") -> Iterator[Triple | Rejected]:
    for record in records:
        try:
            norm = text_field(record, "norm")
            moral = text_field(record, "moral_action")
            immoral = text_field(record, "immoral_action")
            situation = text_field(record, "situation", required=False)
            intention = text_field(record, "intention", required=False)
            if cfg.with_consequences:
                moral = f"{moral} {text_field(record, 'moral_consequence')}"
                immoral = f"{immoral} {text_field(record, 'immoral_consequence')}"
            record_id = id_field(record, "ID") or f"{Path(record.file).stem}:{record.line}"
        except MissingField as e:
            yield Rejected.of(record, str(e))
            continue
        context = " ".join(part.strip() for part in (norm, situation, intention) if part.strip())
        yield Triple(
            id=record_id,
            dataset=dataset,
            context=context,
            source=immoral.strip(),
            target=moral.strip(),
            records=[record],
            metadata=record.as_json(),
            split=normalize_split(record.fields.get("split") if record.fields else None),
        )
