"""PPO for language models, token level: KL estimators, GAE, clipped losses, adaptive KL control.

Pure tensor math (torch only, no Ray, no model). Shapes are [batch, completion tokens]; ``mask`` is 1
on generated tokens and 0 on padding, and every mean here is over the unmasked tokens only. Plain tensors
in, plain tensors out: ``experience.attach_advantages`` lays an iteration's samples out for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / std over the unmasked entries; padding comes out as 0."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probabilities.

    k1: log r (unbiased, can be negative); k2: (log r)^2 / 2; k3: r^-1 - 1 + log r (unbiased, >= 0),
    with log r = logprobs - ref_logprobs (Schulman, "Approximating KL divergence").
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}: use k1, k2 or k3")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-kl_coef * KL on every generated token, plus each sequence's score on its last generated token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores * (mask.sum(dim=1) > 0)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over right-padded sequences: (advantages, returns).

    The value after a sequence's last token is 0 (the episode ends there); padding gets 0.
    """
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate loss; also the clip fraction and the approximate KL(old || new)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return loss, clip_fraction.detach(), approx_kl.detach()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None) -> torch.Tensor:
    """0.5 * squared error to the returns; with ``clip``, the worse of clipped and unclipped (PPO2)."""
    loss = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


MASKED = -1e9
"""The logit of a token the constraint did not allow (finite: its probability is 0 and entropy stays defined)."""


def restrict(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Logits of a decoding constrained to the source: tokens outside ``allowed`` ([n, T, V] bool, as the rollout
    recorded it) get none of the probability, so the PPO ratio and the KL are those of the distribution sampled
    from (else the update would be silently off-policy). None: free decoding, the logits as they are."""
    return logits if allowed is None else logits.float().masked_fill(~allowed, MASKED)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) at each position under softmax(logits / temperature)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): move the KL coefficient so the observed KL tracks ``target``.

    coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon. ``target`` None: a fixed coefficient.
    """

    coef: float
    target: float | None = 6.0
    horizon: int = 10000

    def update(self, kl: float, n_steps: int) -> float:
        if self.target is not None and math.isfinite(kl):
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + error * n_steps / self.horizon
        return self.coef


@dataclass(frozen=True)
class Advantages:
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    """Per-token KL to the reference (zero on padding)."""
    rewards: torch.Tensor
    """Per-token rewards: the score on the last token, minus kl_coef * KL everywhere."""


def estimate_advantages(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                        values: torch.Tensor, mask: torch.Tensor, kl_coef: float, estimator: str = "k1",
                        gamma: float = 1.0, lam: float = 0.95, whiten: bool = True) -> Advantages:
    """Sequence scores and per-token log-probabilities/values ([n, T], right-padded, ``mask`` 1 on real
    tokens) -> KL-penalised per-token rewards -> GAE advantages (whitened over real tokens) and returns."""
    kl = kl_penalty(logprobs, ref_logprobs, estimator) * mask
    rewards = token_rewards(scores, kl, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return Advantages(advantages, returns, kl, rewards)
