"""``secondthought prepare``: raw files -> checked triples -> chains -> token ids -> Parquet, on Ray Data.

read + validate (a custom datasource; bad records become quarantine rows, never errors)
-> chains for every cost set, training text, token ids (``examples.build``)
-> Parquet shards under ``out/data/<split>/`` and quarantine parts, written by the tasks.
The driver only gathers small per-shard summaries into ``manifest.json`` and ``quarantine.jsonl``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from secondthought import console
from secondthought import data as datasets
from secondthought.chains.formats import edit_format
from secondthought.config import ConfigError, DataConfig, PrepareConfig, RayConfig
from secondthought.data.records import Chunk, RawRecord
from secondthought.data.schema import Rejected, Triple
from secondthought.prepare.encoding import Encoder, build
from secondthought.runs import MANIFEST, PreparedDir, claim, resolve_out, write_json
from secondthought.runtime import ray_session

ITEM_SCHEMA = pa.schema([
    ("id", pa.string()), ("dataset", pa.string()), ("split", pa.string()), ("context", pa.string()),
    ("source", pa.string()), ("target", pa.string()), ("metadata", pa.string()),
    ("records", pa.list_(pa.string())), ("raws", pa.list_(pa.string())), ("reason", pa.string()),
    ("read", pa.int64()),
])
"""Triples and rejected records; ``read`` counts the raw records the reader gave since the previous block
(on a block's first row): an independent count that shows a record an adapter lost."""
SUMMARY_SCHEMA = pa.schema([
    ("records_read", pa.int64()), ("records_in", pa.int64()), ("records_out", pa.int64()),
    ("records_quarantined", pa.int64()),
    ("chains", pa.int64()), ("tokens", pa.int64()), ("reasons", pa.string()), ("n_edits", pa.string()),
    ("splits", pa.string()),
])


def _record_key(record: RawRecord) -> str:
    return f"{record.file}:{record.line}"


def _items_block(items: list[Triple | Rejected], read: int) -> pa.Table:
    """A block of the read stage: triples, and rejected records (with ``reason`` set); no items and
    ``read`` > 0: records the adapter read and never gave back."""
    columns: dict[str, list] = {name: [] for name in ITEM_SCHEMA.names}
    if not items:
        return pa.table({**{k: [None] for k in columns}, "records": [[]], "raws": [[]], "reason": [""],
                         "read": [read]}, schema=ITEM_SCHEMA)
    for k, item in enumerate(items):
        counted = read if k == 0 else 0
        if isinstance(item, Rejected):
            values = (None, None, None, None, None, None, None, [f"{item.file}:{item.line}"], [item.raw], item.reason,
                      counted)
        else:
            values = (item.id, item.dataset, item.split, item.context, item.source, item.target, item.metadata,
                      [_record_key(r) for r in item.records], [r.raw for r in item.records], None, counted)
        for column, value in zip(columns.values(), values):
            column.append(value)
    return pa.table(columns, schema=ITEM_SCHEMA)


def _read_blocks(chunk: Chunk, cfg: DataConfig, records_per_block: int) -> Iterator[pa.Table]:
    items: list[Triple | Rejected] = []
    read, reported = [0], 0
    with _no_cyclic_gc():
        for item in datasets.triples(chunk, cfg, read):
            items.append(item)
            if len(items) >= records_per_block:
                yield _items_block(items, read[0] - reported)
                items, reported = [], read[0]
        if items or read[0] > reported:
            yield _items_block(items, read[0] - reported)


def _make_datasource(chunks: list[Chunk], cfg: DataConfig, records_per_block: int):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    def size(chunk: Chunk) -> int:
        return (chunk.end - chunk.start) if chunk.end >= 0 else Path(chunk.path).stat().st_size

    class TriplesDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(size(c) for c in chunks)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
            return [
                ReadTask(
                    lambda chunk=chunk: _read_blocks(chunk, cfg, records_per_block),
                    BlockMetadata(num_rows=None, size_bytes=size(chunk), exec_stats=None, input_files=[chunk.path]),
                    schema=ITEM_SCHEMA,
                )
                for chunk in chunks
            ]

    return TriplesDatasource()


@lru_cache(maxsize=2)
def _encoder(tokenizer_dir: str, format_name: str) -> Encoder:
    from transformers import AutoTokenizer

    return Encoder(AutoTokenizer.from_pretrained(tokenizer_dir), edit_format(format_name))


def _records(keys: list[str], raws: list[str]) -> list[RawRecord]:
    records = []
    for key, raw in zip(keys, raws):
        file, _, line = key.rpartition(":")
        records.append(RawRecord(file, int(line), None, raw))
    return records


def _write_examples(examples: pa.Table, folder: Path, name: str) -> Counter[str]:
    splits: Counter[str] = Counter()
    for split in sorted(set(examples["split"].to_pylist())):
        part = examples.filter(pc.equal(examples["split"], split))
        (folder / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(part, folder / split / f"{name}.parquet")
        splits[split] = len(part)
    return splits


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: a block makes millions of small acyclic objects, which
    reference counting frees, and repeated collections over them cost over a third of the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def process_block(batch: pa.Table, cfg: PrepareConfig, tokenizer_dir: str, out: str) -> pa.Table:
    """Chains, token ids and files for one block of triples; returns the block's summary row.

    File names derive from the block's first input record, so a retried task overwrites its own files.
    """
    with _no_cyclic_gc():
        return _process_block(batch, cfg, tokenizer_dir, out)


def _process_block(batch: pa.Table, cfg: PrepareConfig, tokenizer_dir: str, out: str) -> pa.Table:
    triples: list[Triple] = []
    quarantine: list[Rejected] = []
    columns = {name: batch[name].to_pylist() for name in ITEM_SCHEMA.names}
    for k, reason in enumerate(columns["reason"]):
        records = _records(columns["records"][k], columns["raws"][k])
        if not records:
            continue  # only a count of records read
        if reason is not None:
            quarantine.extend(Rejected.of(r, reason) for r in records)
        else:
            triples.append(Triple(columns["id"][k], columns["dataset"][k], columns["context"][k],
                                  columns["source"][k], columns["target"][k], records, columns["metadata"][k],
                                  columns["split"][k]))
    examples, too_long = build(triples, cfg.cost_sets, cfg.reverse, _encoder(tokenizer_dir, cfg.edit_format), cfg.max_tokens)
    quarantine.extend(too_long)
    keys = [key for keys in columns["records"] for key in keys]
    name = "part-" + hashlib.blake2b(min(keys).encode(), digest_size=8).hexdigest()
    splits = _write_examples(examples, PreparedDir(Path(out)).data, name)
    if quarantine:
        (Path(out) / "quarantine").mkdir(parents=True, exist_ok=True)
        with open(Path(out) / "quarantine" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(item.to_json() + "\n" for item in quarantine)
    summary = {
        "records_read": sum(columns["read"]),
        "records_in": len(keys),
        "records_out": sum(len(t.records) for t in triples) - len(too_long),
        "records_quarantined": len(quarantine),
        "chains": len(examples),
        "tokens": int(pc.sum(pc.list_value_length(examples["input_ids"])).as_py() or 0),
        "reasons": json.dumps(Counter(item.reason for item in quarantine)),
        "n_edits": json.dumps(Counter(examples["n_edits"].to_pylist())),
        "splits": json.dumps(splits),
    }
    return pa.Table.from_pylist([summary], schema=SUMMARY_SCHEMA)


def _merge_quarantine(out: PreparedDir) -> None:
    """Join the tasks' quarantine parts into one file, in input order."""
    parts_dir = out.path / "quarantine"
    parts = sorted(parts_dir.glob("*.jsonl")) if parts_dir.is_dir() else []
    rows = [json.loads(line) for part in parts for line in part.read_text(encoding="utf-8").splitlines()]
    rows.sort(key=lambda r: (r["file"], r["line"]))
    with open(out.quarantine, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    shutil.rmtree(parts_dir, ignore_errors=True)


def _chain_stats(histogram: Counter[int]) -> dict:
    total = sum(histogram.values())
    if not total:
        return {"mean": 0.0, "p50": 0, "p90": 0, "max": 0, "histogram": {}}
    ordered = sorted(histogram.items())

    def quantile(q: float) -> int:
        seen = 0
        for value, count in ordered:
            seen += count
            if seen >= q * total:
                return value
        return ordered[-1][0]

    return {
        "mean": round(sum(v * c for v, c in ordered) / total, 3),
        "p50": quantile(0.5), "p90": quantile(0.9), "max": ordered[-1][0],
        "histogram": {str(v): c for v, c in ordered},
    }


def no_rows_kept(manifest: dict, run: PreparedDir) -> str:
    """Why a preparation kept nothing: an empty input, or the commonest reason records were left out."""
    if not manifest["rows_read"]:
        return f"--data.input holds no records ({', '.join(manifest['inputs'])})"
    reason, count = next(iter(manifest["quarantine_reasons"].items()))
    return (f"no record could be used: {count} of {manifest['rows_in']} were left out because of \"{reason}\" "
            f"(--data.dataset {manifest['dataset']}; wrong columns? see --data.columns; every record and its reason: "
            f"{run.quarantine})")


def reconcile(manifest: dict) -> None:
    """Every record the readers gave is a triple's or quarantined, once: else a bug lost or doubled some."""
    if not manifest["rows_read"] == manifest["rows_in"] == manifest["rows_out"] + manifest["rows_quarantined"]:
        raise RuntimeError(f"prepare lost records: the readers gave {manifest['rows_read']}, {manifest['rows_in']} "
                           "came through the "
                           f"adapter, {manifest['rows_out']} are in triples and {manifest['rows_quarantined']} "
                           "quarantined; please report this with the input")


def run_prepare(data: DataConfig, prepare: PrepareConfig, ray_cfg: RayConfig, out: str | Path,
                overwrite: bool = False, progress: bool = True) -> dict:
    """Run the whole stage into ``out``; returns the manifest (also written to ``out/manifest.json``)."""
    from tqdm import tqdm

    from secondthought.models.lm import load_tokenizer

    run = PreparedDir(resolve_out(out))
    out = run.path
    # the inputs and the tokenizer first: a typo in a flag must not cost an earlier result
    started = time.time()
    chunks = datasets.plan(data, prepare.chunk_mb << 20)
    inside = sorted({c.path for c in chunks if Path(c.path).resolve().is_relative_to(out)})
    if inside:  # replacing the folder would delete the very input
        raise ConfigError(f"--out {out} holds the input {inside[0]}: write the prepared data to another folder")
    datasets.check_head(chunks, data)
    tokenizer = load_tokenizer(prepare.tokenizer)
    if run.done and not overwrite:
        claim(out, "prepared", done_file=MANIFEST)  # refuses a folder that is not ours
        raise ConfigError(f"{out} already holds prepared data: pass --overwrite to replace it")
    claim(out, "prepared", replace=True, done_file=MANIFEST)  # an unfinished earlier run is redone from the start
    tokenizer_dir = run.tokenizer
    tokenizer.save_pretrained(tokenizer_dir)

    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    n_edits: Counter[int] = Counter()
    splits: Counter[str] = Counter()
    expected = sum(c.lines for c in chunks) if all(c.lines is not None for c in chunks) else None
    with ray_session(ray_cfg, shared=out):
        import ray  # after ray_session: a local Ray must learn that it listens on loopback only

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the bar below counts rows, which is what users follow
        context.print_on_execution_start = False
        # One block stream per chunk: Ray then fuses reading and processing into one task per chunk
        # instead of splitting blocks across two operators that compete for the same CPUs.
        ds = ray.data.read_datasource(_make_datasource(chunks, data, prepare.records_per_block),
                                      override_num_blocks=len(chunks))
        ds = ds.map_batches(process_block, batch_size=None, batch_format="pyarrow",
                            fn_kwargs={"cfg": prepare, "tokenizer_dir": str(tokenizer_dir), "out": str(out)})
        with tqdm(desc="prepare", unit=" rows", total=expected, disable=not progress, smoothing=0.1,
                  file=console.terminal()) as bar:
            for summary in ds.iter_rows():
                for key in ("records_read", "records_in", "records_out", "records_quarantined", "chains", "tokens"):
                    totals[key] += summary[key]
                reasons.update(json.loads(summary["reasons"]))
                n_edits.update({int(k): v for k, v in json.loads(summary["n_edits"]).items()})
                splits.update(json.loads(summary["splits"]))
                bar.update(summary["records_in"])
                bar.set_postfix(chains=totals["chains"], quarantined=totals["records_quarantined"])
    _merge_quarantine(run)
    elapsed = time.time() - started
    manifest = {
        "dataset": data.dataset,
        "inputs": list(dict.fromkeys(chunk.path for chunk in chunks)),
        "rows_read": totals["records_read"],
        "rows_in": totals["records_in"],
        "rows_out": totals["records_out"],
        "rows_quarantined": totals["records_quarantined"],
        "chains_out": totals["chains"],
        "tokens_out": totals["tokens"],
        "chains_per_split": dict(sorted(splits.items())),
        "quarantine_reasons": dict(reasons.most_common()),
        "chain_length": _chain_stats(n_edits),
        "cost_sets": [list(c) for c in prepare.cost_sets],
        "reverse": prepare.reverse,
        "edit_format": prepare.edit_format,
        "tokenizer": {"name": prepare.tokenizer, "path": str(tokenizer_dir), "vocab_size": len(tokenizer)},
        "data_config": asdict(data),
        "prepare_config": asdict(prepare),
        "seconds": round(elapsed, 2),
        "rows_per_second": round(totals["records_in"] / elapsed, 1) if elapsed else None,
    }
    reconcile(manifest)
    if not manifest["rows_out"]:
        raise ConfigError(no_rows_kept(manifest, run))
    write_json(run.manifest_file, manifest)  # last: marks the stage done
    return manifest
