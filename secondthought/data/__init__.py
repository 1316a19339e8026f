"""Dataset adapters: raw files of each known dataset -> canonical triples or rejected records."""

from __future__ import annotations

import glob
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

from secondthought.config import ConfigError, DataConfig
from secondthought.data import ethics, generic, mic, moral_stories
from secondthought.data.records import Chunk, RawRecord, plan_chunks, read_chunk
from secondthought.data.schema import Rejected, Triple, check_all, hashed_split

Adapt = Callable[[Iterator[RawRecord], DataConfig], Iterator[Triple | Rejected]]


@dataclass(frozen=True)
class Adapter:
    adapt: Adapt
    format: str | None = None
    """Raw format the dataset comes in; None: from the file name or --data.format."""
    header: bool = True


ADAPTERS: dict[str, Adapter] = {
    "sample": Adapter(lambda records, cfg: moral_stories.adapt(records, cfg, dataset="sample"), "jsonl"),
    "moral-stories": Adapter(moral_stories.adapt, "jsonl"),
    "ethics-commonsense": Adapter(ethics.commonsense, "csv"),
    "ethics-deontology": Adapter(ethics.deontology, "csv"),
    "ethics-justice": Adapter(ethics.justice, "csv"),
    "ethics-utilitarianism": Adapter(ethics.utilitarianism, "csv", header=False),
    "mic": Adapter(mic.adapt, "csv"),
    "generic": Adapter(generic.adapt),
}


def sample_path() -> str:
    """The bundled sample: triples in Moral Stories form written for this project."""
    return str(resources.files("secondthought.data").joinpath("sample.jsonl"))


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise ConfigError(f"--data.dataset {name!r} is not known; choose one of: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]


def input_files(cfg: DataConfig) -> list[str]:
    """The input files named by --data.input (globs expanded), or the bundled sample."""
    if not cfg.input:
        if cfg.dataset != "sample":
            raise ConfigError(f"--data.input is required for --data.dataset {cfg.dataset}")
        return [sample_path()]
    files: list[str] = []
    for pattern in cfg.input:
        matches = sorted(glob.glob(str(Path(pattern).expanduser()))) if glob.has_magic(pattern) else [pattern]
        for match in matches:
            if not Path(match).expanduser().is_file():
                raise ConfigError(f"--data.input: no such file: {match}")
            files.append(str(Path(match).expanduser().resolve()))
        if not matches:
            raise ConfigError(f"--data.input: pattern {pattern!r} matches no file")
    return files


def plan(cfg: DataConfig, chunk_bytes: int) -> list[Chunk]:
    adapter = get_adapter(cfg.dataset)
    if cfg.dataset == "generic":
        generic.columns_of(cfg)
    return plan_chunks(input_files(cfg), cfg.format or adapter.format, chunk_bytes, adapter.header)


def check_head(chunks: list[Chunk], cfg: DataConfig, records: int = 200) -> None:
    """Fail fast, before any Ray work, when the input's first records give no triple at all: the wrong
    --data.dataset or --data.columns, or an empty input. (Bad records further down are quarantined.)"""
    items = list(islice(triples(chunks[0], cfg), records))
    if not items and len(chunks) == 1:
        raise ConfigError(f"--data.input {chunks[0].path} holds no records")
    if items and not any(isinstance(i, Triple) for i in items):
        reason, count = Counter(i.reason for i in items).most_common(1)[0]
        raise ConfigError(f"--data.input {chunks[0].path}: none of its first {len(items)} records makes a triple for "
                          f"--data.dataset {cfg.dataset}; {count} of them: {reason}")


def triples(chunk: Chunk, cfg: DataConfig, read: list[int] | None = None) -> Iterator[Triple | Rejected]:
    """Every record of a chunk, as a checked triple (with its split) or a rejected record; ``read[0]``
    counts the records the reader gave (for a reconciliation independent of the adapter)."""
    adapter = get_adapter(cfg.dataset)
    unreadable: list[Rejected] = []
    read = read if read is not None else [0]

    def readable(records: Iterable[RawRecord]) -> Iterator[RawRecord]:
        for record in records:
            read[0] += 1
            if record.error:
                unreadable.append(Rejected.of(record, record.error))
            else:
                yield record

    for item in check_all(adapter.adapt(readable(read_chunk(chunk)), cfg), cfg.max_chars):
        yield from unreadable
        unreadable.clear()
        if isinstance(item, Triple) and item.split is None:
            item.split = hashed_split(item.group or item.id, cfg.eval_fraction, cfg.test_fraction)
        yield item
    yield from unreadable
