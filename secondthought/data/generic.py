"""Any JSONL, CSV/TSV or Parquet file, given which columns hold context, source and target."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from secondthought.config import ConfigError, DataConfig
from secondthought.data.records import RawRecord
from secondthought.data.schema import MissingField, Rejected, Triple, id_field, normalize_split, text_field


def columns_of(cfg: DataConfig) -> dict[str, str]:
    unknown = set(cfg.columns) - {"id", "context", "source", "target", "split"}
    if unknown or not {"source", "target"} <= set(cfg.columns):
        raise ConfigError(
            "--data.columns must map source and target (and optionally id, context, split) to column names, "
            f"e.g. '{{\"context\": \"norm,situation\", \"source\": \"bad\", \"target\": \"good\"}}'; got {cfg.columns}"
        )
    return cfg.columns


def adapt(records: Iterator[RawRecord], cfg: DataConfig) -> Iterator[Triple | Rejected]:
    columns = columns_of(cfg)
    context_columns = [c.strip() for c in columns.get("context", "").split(",") if c.strip()]
    for record in records:
        try:
            source = text_field(record, columns["source"])
            target = text_field(record, columns["target"])
            context = " ".join(text_field(record, c).strip() for c in context_columns)
            record_id = (id_field(record, columns["id"]) if "id" in columns else "") or (
                f"{Path(record.file).stem}:{record.line}"
            )
            split = text_field(record, columns["split"], required=False) if "split" in columns else None
        except MissingField as e:
            yield Rejected.of(record, str(e))
            continue
        yield Triple(record_id, "generic", context, source.strip(), target.strip(), [record],
                     record.as_json(), normalize_split(split))
