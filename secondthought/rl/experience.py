"""Rollout samples, how they are batched for scoring and learning, and their advantages (numpy, and torch for
``ppo``'s math).

A batch lays each sample out as ``[left padding | prompt | completion | right padding]``: prompts are
left-padded to one width P and completions right-padded to one width T, so the completion's tokens
sit at the same positions P..P+T-1 in every row, and the logits that predict them at P-1..P+T-2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from secondthought.rl.ppo import estimate_advantages


@dataclass
class Sample:
    """One prompt and one completion, with what scoring and learning attach to it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    index: int = 0
    """Row of the prompt table it came from."""
    logprobs: np.ndarray | None = None
    """Log-probabilities of the completion's tokens under the policy that will be updated."""
    ref_logprobs: np.ndarray | None = None
    values: np.ndarray | None = None
    advantages: np.ndarray | None = None
    returns: np.ndarray | None = None
    allowed: np.ndarray | None = None
    """Constrained rollouts: the tokens the constraint allowed at each step, bits packed ([len, ceil(V / 8)])."""


@dataclass(frozen=True)
class TokenBatch:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    position_ids: np.ndarray
    completion_ids: np.ndarray
    completion_mask: np.ndarray
    prompt_width: int


def collate(samples: Sequence[Sample], pad_id: int) -> TokenBatch:
    prompt_width = max(len(s.prompt_ids) for s in samples)
    completion_width = max(max(len(s.completion_ids) for s in samples), 1)
    n, width = len(samples), prompt_width + completion_width
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, width), dtype=np.int64)
    for k, s in enumerate(samples):
        p, c = len(s.prompt_ids), len(s.completion_ids)
        input_ids[k, prompt_width - p : prompt_width] = s.prompt_ids
        input_ids[k, prompt_width : prompt_width + c] = s.completion_ids
        attention_mask[k, prompt_width - p : prompt_width + c] = 1
    position_ids = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None)
    completion_mask = attention_mask[:, prompt_width:]
    return TokenBatch(input_ids, attention_mask, position_ids, input_ids[:, prompt_width:], completion_mask,
                      prompt_width)


def padded(arrays: Sequence[np.ndarray], width: int | None = None, fill: float = 0.0) -> np.ndarray:
    """Right-pad 1-d arrays into one [n, width] float32 array."""
    width = width if width is not None else max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), max(width, 1)), fill, dtype=np.float32)
    for k, a in enumerate(arrays):
        out[k, : len(a)] = a
    return out


def unpadded(matrix: np.ndarray, samples: Sequence[Sample]) -> list[np.ndarray]:
    """Rows of a [n, T] array cut back to each sample's completion length."""
    return [np.asarray(matrix[k, : len(s.completion_ids)], dtype=np.float32) for k, s in enumerate(samples)]


def shards(items: Sequence, n: int) -> list[list]:
    """``n`` contiguous shards whose sizes differ by at most one."""
    bounds = np.linspace(0, len(items), n + 1).round().astype(int)
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(n)]


def allowed_batch(samples: Sequence[Sample], width: int, vocab: int) -> np.ndarray | None:
    """[n, width, vocab] bool: each sample's allowed tokens per completion step (padding allows every token);
    None when the samples were decoded freely."""
    if all(s.allowed is None for s in samples):
        return None
    out = np.ones((len(samples), max(width, 1), vocab), dtype=bool)
    for k, s in enumerate(samples):
        if s.allowed is not None and len(s.allowed):
            out[k, : len(s.allowed)] = np.unpackbits(s.allowed, axis=-1, count=vocab).astype(bool)
    return out


def attach_advantages(samples: Sequence[Sample], scores: np.ndarray, kl_coef: float, estimator: str, gamma: float,
                      lam: float, whiten: bool) -> dict:
    """Set each sample's advantages and returns from its log-probabilities, reference log-probabilities and
    values; returns the iteration's mean sequence KL, reward and score."""
    width = max(len(s.completion_ids) for s in samples)
    mask = torch.from_numpy(padded([np.ones(len(s.completion_ids)) for s in samples], width))
    logp, ref, values = (torch.from_numpy(padded([getattr(s, name) for s in samples], width))
                         for name in ("logprobs", "ref_logprobs", "values"))
    est = estimate_advantages(torch.from_numpy(scores), logp, ref, values, mask, kl_coef, estimator, gamma, lam,
                              whiten)
    for s, a, r in zip(samples, unpadded(est.advantages.numpy(), samples), unpadded(est.returns.numpy(), samples)):
        s.advantages, s.returns = a, r
    return {"kl": float(est.kl.sum(dim=1).mean()), "reward": float(est.rewards.sum(dim=1).mean()),
            "score": float(scores.mean())}
