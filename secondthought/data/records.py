"""Raw records from JSONL, CSV/TSV and Parquet files, with read errors kept per record.

A record that cannot be read (undecodable bytes, malformed JSON, wrong number of CSV fields)
comes out with ``error`` set instead of failing the read, so that it can be quarantined.
JSONL files are split into line-aligned byte ranges (chunks) that are read in parallel.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from secondthought.config import ConfigError

FORMATS = ("jsonl", "csv", "tsv", "parquet")
_RAW_SHOWN = 1000
_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class RawRecord:
    file: str
    line: int
    """1-based line where the record starts (row number for Parquet)."""
    fields: dict[str, Any] | None
    raw: str
    """The record's text as read, shortened, for the quarantine report."""
    error: str | None = None
    json_text: str | None = None
    """The whole record as a JSON object, when it was read as one (JSONL)."""

    def as_json(self) -> str:
        return self.json_text if self.json_text is not None else json.dumps(self.fields, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class Chunk:
    """A part of one input file that one read task reads."""

    path: str
    format: str
    start: int = 0
    end: int = -1
    first_line: int = 1
    header: bool = True
    lines: int | None = None
    """Lines in the chunk (JSONL only): a bound for the progress bar."""


def format_of(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for fmt, suffixes in {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",), "tsv": (".tsv",),
                          "parquet": (".parquet", ".pq")}.items():
        if name.endswith(suffixes):
            return fmt
    raise ConfigError(f"--data.input {path}: cannot tell its format from the name: give --data.format (one of "
                      f"{', '.join(FORMATS)})")


def plan_chunks(paths: list[str], fmt: str | None, chunk_bytes: int, header: bool = True) -> list[Chunk]:
    """Line-aligned byte ranges of about ``chunk_bytes`` for JSONL; one chunk per file otherwise."""
    chunks: list[Chunk] = []
    for path in paths:
        kind = fmt or format_of(path)
        if kind != "jsonl" or path.endswith(".gz"):  # a compressed file is read whole, by one task
            chunks.append(Chunk(path, kind, header=header))
            continue
        start, line = 0, 1
        with open(path, "rb") as f:
            while True:
                data = f.read(chunk_bytes)
                if not data:
                    break
                if not data.endswith(b"\n"):
                    data += f.readline()
                count = data.count(b"\n") + (not data.endswith(b"\n"))
                chunks.append(Chunk(path, kind, start, start + len(data), line, lines=count))
                start += len(data)
                line += count
    return chunks


def _shown(text: str) -> str:
    return text if len(text) <= _RAW_SHOWN else text[:_RAW_SHOWN] + "..."


def _open_text(path: str):
    """A text file (gzip-compressed when its name ends in .gz); a byte-order mark is dropped."""
    opener = gzip.open if path.endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")


def _jsonl(chunk: Chunk) -> Iterator[RawRecord]:
    if chunk.path.endswith(".gz"):
        with gzip.open(chunk.path, "rb") as f:
            data = f.read()
    else:
        with open(chunk.path, "rb") as f:
            f.seek(chunk.start)
            data = f.read(chunk.end - chunk.start)
    if chunk.start == 0:
        data = data.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark
    for offset, line_bytes in enumerate(data.split(b"\n")):
        line_bytes = line_bytes.removesuffix(b"\r")
        if not line_bytes.strip():
            continue
        number = chunk.first_line + offset
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raw = line_bytes.decode("utf-8", errors="backslashreplace")
            yield RawRecord(chunk.path, number, None, _shown(raw), f"undecodable bytes (not UTF-8) at byte {e.start}")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            yield RawRecord(chunk.path, number, None, _shown(text), f"malformed JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(value, dict):
            yield RawRecord(chunk.path, number, None, _shown(text), f"expected a JSON object, got {type(value).__name__}")
            continue
        if _SURROGATE_ESCAPE.search(text) and not _encodes(value):
            yield RawRecord(chunk.path, number, None, _shown(text), "a lone surrogate (a \\udXXX escape without its "
                            "pair): not valid Unicode")
            continue
        yield RawRecord(chunk.path, number, value, _shown(text), json_text=text)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""JSON's escape of half a surrogate pair: valid JSON, and a string no Arrow column or tokenizer takes alone."""


def _encodes(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _delimited(chunk: Chunk) -> Iterator[RawRecord]:
    delimiter = "\t" if chunk.format == "tsv" else ","
    csv.field_size_limit(1 << 26)
    with _open_text(chunk.path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        names: list[str] | None = None
        previous_end = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                yield RawRecord(chunk.path, previous_end + 1, None, "", f"malformed CSV: {e}")
                previous_end = reader.line_num
                continue
            line, previous_end = previous_end + 1, reader.line_num
            if names is None:
                if chunk.header:
                    names = row
                    continue
                names = [str(i) for i in range(len(row))]
            if not row or all(not cell.strip() for cell in row):
                continue
            raw = delimiter.join(row)
            if _SURROGATE.search(raw):
                shown = raw.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
                yield RawRecord(chunk.path, line, None, _shown(shown), "undecodable bytes (not UTF-8)")
            elif len(row) != len(names):
                yield RawRecord(chunk.path, line, None, _shown(raw),
                                f"malformed CSV: expected {len(names)} fields, found {len(row)}")
            else:
                yield RawRecord(chunk.path, line, dict(zip(names, row)), _shown(raw))


def _parquet(chunk: Chunk) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(chunk.path).iter_batches(batch_size=4096):
        for fields in batch.to_pylist():
            number += 1
            yield RawRecord(chunk.path, number, fields, _shown(json.dumps(fields, default=str, ensure_ascii=False)))


def read_chunk(chunk: Chunk) -> Iterator[RawRecord]:
    """Every record of a chunk, in file order."""
    if not Path(chunk.path).is_file():
        raise FileNotFoundError(f"input file not found: {chunk.path}")
    if chunk.format == "jsonl":
        return _jsonl(chunk)
    if chunk.format in ("csv", "tsv"):
        return _delimited(chunk)
    if chunk.format == "parquet":
        return _parquet(chunk)
    raise ValueError(f"unknown format {chunk.format!r}: use one of {', '.join(FORMATS)}")

