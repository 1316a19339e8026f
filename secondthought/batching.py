"""Deterministic, length-bucketed micro-batches for training (pure: numpy only).

Every worker sees the rows in the same order and keeps those whose index modulo the world size is
its rank. Rows are gathered in windows, sorted by length inside a window (little padding), cut into
micro-batches, and the micro-batches of a window shuffled with a seed that depends on the epoch.
The same seed, epoch and data give the same micro-batches, so a restarted run can skip exactly the
micro-batches it had done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

IGNORE = -100


@dataclass(frozen=True)
class Row:
    input_ids: np.ndarray
    prompt_len: int


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.attention_mask.sum())

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / self.attention_mask.size


def collate(rows: Sequence[Row], pad_id: int, mask_prompt: bool) -> Batch:
    """Right-padded batch; labels are -100 on padding and, with ``mask_prompt``, on the prompt."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for k, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[k, :n] = row.input_ids
        attention_mask[k, :n] = 1
        labels[k, :n] = row.input_ids
        if mask_prompt:
            labels[k, : row.prompt_len] = IGNORE
    return Batch(input_ids, attention_mask, labels)


def rows_of_rank(rows: Iterable[Row], rank: int, world: int) -> Iterator[Row]:
    for index, row in enumerate(rows):
        if index % world == rank:
            yield row


def bucketed(rows: Iterable[Row], micro_batch_size: int, window: int, seed: int, epoch: int) -> Iterator[list[Row]]:
    """Full micro-batches of similar length; the remainder of the last window is dropped."""
    rng = np.random.default_rng([seed, epoch])
    size = micro_batch_size * window
    buffer: list[Row] = []

    def flush(buffer: list[Row]) -> Iterator[list[Row]]:
        buffer.sort(key=lambda r: len(r.input_ids))
        batches = [buffer[i : i + micro_batch_size] for i in range(0, len(buffer) - micro_batch_size + 1,
                                                                     micro_batch_size)]
        for k in rng.permutation(len(batches)):
            yield batches[k]

    for row in rows:
        buffer.append(row)
        if len(buffer) == size:
            yield from flush(buffer)
            buffer = []
    if buffer:
        yield from flush(buffer)


def micro_batches_per_epoch(n_rows: int, world: int, micro_batch_size: int, grad_accum: int) -> int:
    """Micro-batches every worker runs per epoch: the same on all ranks, whole optimizer steps only."""
    per_rank = n_rows // world
    steps = per_rank // (micro_batch_size * grad_accum)
    return steps * grad_accum


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + np.cos(np.pi * progress))
