"""Deterministic, length-bucketed micro-batches for training (pure: numpy only).

Every worker sees the rows in the same order and keeps those whose index modulo the world size is
its rank. Rows are gathered in windows, sorted by length inside a window (little padding), cut into
micro-batches, and the micro-batches of a window shuffled with a seed that depends on the epoch.
Every row is trained on in every epoch, and every rank runs the same number of micro-batches.
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
    """Every ``world``-th row from ``rank`` on; the first rows again where the count does not divide
    evenly (as torch's DistributedSampler pads), so every rank gets ceil(n / world) rows."""
    first: list[Row] = []
    count = 0
    for index, row in enumerate(rows):
        if index < world:
            first.append(row)
        if index % world == rank:
            yield row
        count = index + 1
    for index in range(count, count + (-count) % world):
        if index % world == rank:
            yield first[(index - count) % len(first)]


def _last_part(rows: int, micro_batch_size: int, window: int, grad_accum: int) -> tuple[int, int, int]:
    """How ``bucketed`` cuts a rank's rows: (full windows first, rows in the last part, micro-batches in the
    last part). The last part is the last full window with the remainder, cut into as many batches as make
    the epoch whole optimizer steps: batches then hold fewer rows than ``micro_batch_size``, never more,
    and only where there are fewer rows than batches (tiny micro-batches, large accumulation) does a
    batch repeat a row of the last part."""
    size = micro_batch_size * window
    full = max(rows // size - 1, 0)
    last = rows - full * size
    before = full * window
    batches = -(-(before + -(-last // micro_batch_size)) // grad_accum) * grad_accum - before
    return full, last, batches


def bucketed(rows: Iterable[Row], micro_batch_size: int, window: int, seed: int, epoch: int,
             grad_accum: int = 1) -> Iterator[list[Row]]:
    """Micro-batches of similar length covering every row: windows of ``window`` micro-batches, sorted by
    length inside, shuffled per epoch; see ``_last_part`` for the end of the epoch."""
    rng = np.random.default_rng([seed, epoch])
    size = micro_batch_size * window

    def shuffled(batches: list[list[Row]]) -> Iterator[list[Row]]:
        for k in rng.permutation(len(batches)):
            yield batches[k]

    # A full window waits until the next one is full too: the last one joins the remainder.
    pending: list[Row] = []
    buffer: list[Row] = []
    windows = 0
    for row in rows:
        buffer.append(row)
        if len(buffer) == size:
            if pending:
                pending.sort(key=lambda r: len(r.input_ids))
                yield from shuffled([pending[i : i + micro_batch_size] for i in range(0, size, micro_batch_size)])
            pending, buffer = buffer, []
            windows += 1
    last = pending + buffer
    if not last:
        return
    _, _, n_batches = _last_part(max(windows - 1, 0) * size + len(last), micro_batch_size, window, grad_accum)
    last.sort(key=lambda r: len(r.input_ids))
    bounds = np.linspace(0, len(last), n_batches + 1).round().astype(int)  # near-equal sizes, in length order
    yield from shuffled([last[a:b] or [last[k % len(last)]] for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))])


def micro_batches_per_epoch(n_rows: int, world: int, micro_batch_size: int, grad_accum: int, window: int) -> int:
    """Micro-batches every worker runs per epoch: the same on all ranks, whole optimizer steps, every row
    used (0 when there are fewer rows than workers)."""
    per_rank = -(-n_rows // world)
    full, last, batches = _last_part(per_rank, micro_batch_size, window, grad_accum)
    if n_rows < world:
        return 0
    return full * window + batches
