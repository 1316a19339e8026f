"""The RL stage's prompts: training triples (one forward chain each) and their reversed chains."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secondthought.config import ConfigError
from secondthought.data.schema import judge_held_out
from secondthought.runs import PreparedDir


@dataclass
class Prompts:
    """The training split's triples (one forward chain each) and their reversed chains, if prepared."""

    ids: list[str]
    context: list[str]
    source: list[str]
    target: list[str]
    chain: list[str]
    prompt_ids: list[list[int]]
    reverse: dict[str, tuple[str, str, str, str]]
    """id -> (context, source, chain, target) of the aligned -> unaligned direction."""

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, iteration: int, size: int, seed: int) -> list[int]:
        """Rows for an iteration (1-based): consecutive slices of one seeded permutation per epoch."""
        orders: dict[int, np.ndarray] = {}
        rows = []
        for j in range((iteration - 1) * size, iteration * size):
            epoch, position = divmod(j, len(self))
            if epoch not in orders:
                orders[epoch] = np.random.default_rng([seed, epoch]).permutation(len(self))
            rows.append(int(orders[epoch][position]))
        return rows


def load_prompts(prepared: PreparedDir) -> Prompts:
    """Training triples, less the half held out for the evaluation judge."""
    forward, reverse = prepared.first_chains("train", ["context", "source", "target", "chain"])
    rows = [r for r in forward if not judge_held_out(r["id"])]
    if not rows:
        raise ConfigError(f"{prepared.split('train')} holds no forward chains to take prompts from")
    negatives = {k: (r["context"], r["source"], r["chain"], r["target"])
                 for k, r in reverse.items() if not judge_held_out(k)}
    return Prompts([r["id"] for r in rows], [r["context"] for r in rows], [r["source"] for r in rows],
                   [r["target"] for r in rows], [r["chain"] for r in rows], [r["prompt_ids"] for r in rows],
                   negatives)
