"""The Ray actors of the RL stage, laid out as in OpenRLHF: rollout workers, a reference, a
discriminator and a DeepSpeed learner group. The math they run lives in ppo.py and secondthought.decoding.policy.

Rollout workers and the reference hold no state of their own beyond weights the driver can send
again, so a dead one is restarted by Ray and its call redone. Learners and the discriminator learn;
losing one rolls the run back to its last checkpoint (the driver's job, see driver.py).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import ray

from secondthought.rl.experience import Sample, TokenBatch, allowed_batch, collate, padded
from secondthought.training import rendezvous
from secondthought.training.engine import engine_config, inject_fault

Fault = tuple[int, str] | None
"""Testing fault tolerance: (iteration, marker file): the actor exits abruptly, once, in that iteration."""


def _maybe_fail(fault: Fault, iteration: int) -> None:
    if fault is not None and iteration == fault[0]:
        inject_fault(fault[1])


def _setup_torch(threads: int, use_gpu: bool):
    import torch

    if not use_gpu:
        torch.set_num_threads(threads)
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def _tensors(tb: TokenBatch, device) -> dict:
    import torch

    return {name: torch.from_numpy(getattr(tb, name)).to(device)
            for name in ("input_ids", "attention_mask", "position_ids")}


def completion_logits(lm, tb: TokenBatch, device, samples: list[Sample]):
    """Logits that predict each completion token (restricted to what a constrained rollout allowed), and the
    hidden states they come from: [n, T, ...]."""
    import torch

    from secondthought.rl.ppo import restrict

    hidden = lm.base_model(**_tensors(tb, device)).last_hidden_state[:, tb.prompt_width - 1 : -1]
    logits = lm.get_output_embeddings()(hidden)
    allowed = allowed_batch(samples, logits.shape[1], logits.shape[-1])
    return restrict(logits, None if allowed is None else torch.from_numpy(allowed).to(device)), hidden


def _policy_with_value(lm):
    import torch

    class PolicyWithValue(torch.nn.Module):
        """The policy LM and a value head on its last hidden state: one module, one DeepSpeed engine."""

        def __init__(self):
            super().__init__()
            self.lm = lm
            self.value_head = torch.nn.Linear(lm.config.hidden_size, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

        def forward(self, tb: TokenBatch, device, samples: list[Sample]):
            logits, hidden = completion_logits(self.lm, tb, device, samples)
            return logits, self.value_head(hidden).squeeze(-1)

    return PolicyWithValue()


@ray.remote
class RolloutWorker:
    """A policy copy that samples completions; its weights carry the learner's version number."""

    def __init__(self, policy_dir: str, sampling: dict, threads: int, use_gpu: bool, index: int, fault: Fault = None,
                 constrain=None, edit_format: str = ""):
        from dataclasses import replace

        from secondthought.decoding.policy import Policy, SamplingParams

        device = _setup_torch(threads, use_gpu)
        self.policy = Policy.load(policy_dir, device)
        if edit_format:  # the run's (see driver.edit_format_of)
            self.policy.info = replace(self.policy.info, edit_format=edit_format)
        self.params = SamplingParams(**sampling)
        self.constrain = constrain
        """A Constrain: decode constrained to each prompt's source and record the masks (None: free)."""
        self.version = None  # weights as loaded: the driver always sends a version before the first rollout
        self.index, self.fault = index, fault

    def set_weights(self, version: int, weights: dict) -> int:
        self.policy.model.load_state_dict(weights, strict=True)
        self.version = version
        return version

    def generate(self, version: int, prompts: list[list[int]], seed: int, iteration: int,
                 sources: list[str] | None = None) -> dict:
        """Completions of the prompts; constrained, also the masks each step allowed (packed bits)."""
        import time

        if self.version != version:
            raise RuntimeError(f"rollout worker {self.index} holds weights v{self.version}, asked for v{version}")
        _maybe_fail(self.fault, iteration)
        started = time.time()
        constraints = None
        if self.constrain is not None:
            constraints = self.policy.constraints(sources, self.constrain)
            for c in constraints:
                c.record = []
        completions = self.policy.sample(prompts, self.params, seed, constraints=constraints)
        allowed = [np.stack(c.record) if c.record else np.zeros((0, 0), np.uint8) for c in constraints] \
            if constraints is not None else None
        return {"completions": completions, "allowed": allowed, "seconds": time.time() - started,
                "version": self.version}


@ray.remote
class Reference:
    """The frozen SFT model: log-probabilities of sampled tokens for the KL penalty."""

    def __init__(self, policy_dir: str, threads: int, use_gpu: bool, temperature: float, micro_batch_size: int,
                 fault: Fault = None):
        from secondthought.models.lm import load_model

        self.device = _setup_torch(threads, use_gpu)
        self.model = load_model(policy_dir).to(self.device).eval()
        self.temperature, self.micro, self.fault = temperature, micro_batch_size, fault

    def logprobs(self, samples: list[Sample], iteration: int) -> list[np.ndarray]:
        import torch

        from secondthought.rl.ppo import logprobs_of

        _maybe_fail(self.fault, iteration)
        out = []
        with torch.no_grad():
            for start in range(0, len(samples), self.micro):
                part = samples[start : start + self.micro]
                tb = collate(part, self.model.config.pad_token_id)
                logits, _ = completion_logits(self.model, tb, self.device, part)
                logp = logprobs_of(logits, torch.from_numpy(tb.completion_ids).to(self.device), self.temperature)
                out += [row[: len(s.completion_ids)] for row, s in zip(logp.cpu().numpy(), part)]
        return out


@ray.remote
class Discriminator:
    """Gold (context, source, chain, target) against negatives; its log-odds are the adversarial reward."""

    def __init__(self, encoder: str, lr: float, threads: int, use_gpu: bool, seed: int, trust_remote_code: bool,
                 fault: Fault = None):
        from secondthought.models.encoder import PairClassifier

        device = _setup_torch(threads, use_gpu)
        self.classifier = PairClassifier(encoder, lr=lr, device=str(device), seed=seed,
                                         trust_remote_code=trust_remote_code)
        self.fault = fault

    def logodds(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        return self.classifier.logits(pairs)

    def accuracy(self, gold: list[tuple[str, str]], negatives: list[tuple[str, str]]) -> float:
        """Share of pairs on their side of 0: gold above, negatives below."""
        signed = np.concatenate([self.classifier.logits(gold), -self.classifier.logits(negatives)])
        return float((signed > 0).mean())

    def update(self, gold: list[tuple[str, str]], negatives: list[tuple[str, str]], steps: int, seed: int,
               iteration: int, batch_size: int = 0) -> dict:
        """``steps`` passes over the pairs, in one batch (``batch_size`` 0) or batches of that size."""
        import torch

        _maybe_fail(self.fault, iteration)
        torch.manual_seed(seed)  # dropout: the same update after a restore from a checkpoint
        rng = np.random.default_rng(seed)
        pairs, labels = gold + negatives, [1.0] * len(gold) + [0.0] * len(negatives)
        size = batch_size or len(pairs)
        stats = defaultdict(list)
        for _ in range(steps):
            order = rng.permutation(len(pairs))
            for start in range(0, len(pairs), size):
                batch = order[start : start + size]
                for name, value in self.classifier.train_step([pairs[i] for i in batch],
                                                              [labels[i] for i in batch]).items():
                    stats[name].append(value)
        return {f"disc_{name}": float(np.mean(values)) for name, values in stats.items()}

    def save(self, folder: str) -> None:
        self.classifier.save(folder)

    def load(self, folder: str) -> None:
        self.classifier.load(folder)


@ray.remote
class Learner:
    """One data-parallel rank of the PPO learner: policy + value head in a DeepSpeed engine."""

    def __init__(self, cfg: dict, policy_dir: str, rank: int, world: int, threads: int, fault: Fault = None):
        from secondthought.config import RLConfig

        self.cfg, self.policy_dir, self.rank, self.world = RLConfig(**cfg), policy_dir, rank, world
        self.fault = fault
        self.device = _setup_torch(threads, self.cfg.use_gpu)

    def address(self) -> tuple[str, int]:
        """Rank 0: where the rendezvous store will listen (this node's own address); see rendezvous.py."""
        return rendezvous.serve(ray.util.get_node_ip_address())

    def setup(self, address: tuple[str, int]) -> None:
        """Join the process group at rank 0's :meth:`address` and build the DeepSpeed engine."""
        import deepspeed
        import torch

        from secondthought.models.lm import load_model

        cfg = self.cfg
        os.environ.setdefault("LOCAL_RANK", "0")  # Ray gives each learner its own device
        backend = rendezvous.join(address, self.rank, self.world, self.device.type)
        deepspeed.init_distributed(dist_backend=backend)
        torch.manual_seed(cfg.seed)
        lm = load_model(self.policy_dir, dtype=torch.float32)
        self.pad_id = lm.config.pad_token_id
        model = _policy_with_value(lm)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=self.device.type == "cuda")
        per_rank = cfg.minibatch_size // self.world
        config = engine_config(cfg, cfg.micro_batch_size, per_rank // cfg.micro_batch_size, cfg.lr)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def forward(self, samples: list[Sample]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Log-probabilities and values of the samples under the current policy (no gradient)."""
        import torch

        from secondthought.rl.ppo import logprobs_of

        logprobs, values = [], []
        self.engine.eval()
        with torch.no_grad():
            for start in range(0, len(samples), self.cfg.micro_batch_size):
                part = samples[start : start + self.cfg.micro_batch_size]
                tb = collate(part, self.pad_id)
                logits, value = self.engine(tb, self.device, part)
                logp = logprobs_of(logits, torch.from_numpy(tb.completion_ids).to(self.device), self.cfg.temperature)
                logprobs += [row[: len(s.completion_ids)] for row, s in zip(logp.cpu().numpy(), part)]
                values += [row[: len(s.completion_ids)] for row, s in zip(value.float().cpu().numpy(), part)]
        self.engine.train()
        return logprobs, values

    def train(self, samples: list[Sample], seed: int, iteration: int) -> dict:
        """PPO epochs over this rank's samples in minibatches; one optimizer step per minibatch."""
        import torch

        from secondthought.rl import ppo

        cfg = self.cfg
        _maybe_fail(self.fault, iteration)
        rng = np.random.default_rng(seed)
        per_rank = cfg.minibatch_size // self.world
        stats = defaultdict(list)
        for _ in range(cfg.ppo_epochs):
            order = rng.permutation(len(samples))
            for start in range(0, len(order) - per_rank + 1, per_rank):
                minibatch = [samples[i] for i in order[start : start + per_rank]]
                for micro in range(0, per_rank, cfg.micro_batch_size):
                    part = minibatch[micro : micro + cfg.micro_batch_size]
                    tb = collate(part, self.pad_id)
                    width = tb.completion_ids.shape[1]
                    old_logp, advantages, returns, old_values = (
                        torch.from_numpy(padded([getattr(s, name) for s in part], width)).to(self.device)
                        for name in ("logprobs", "advantages", "returns", "values"))
                    mask = torch.from_numpy(tb.completion_mask).to(self.device).float()
                    logits, values = self.engine(tb, self.device, part)
                    logp = ppo.logprobs_of(logits, torch.from_numpy(tb.completion_ids).to(self.device), cfg.temperature)
                    pg_loss, clip_fraction, approx_kl = ppo.policy_loss(logp, old_logp, advantages, mask, cfg.clip)
                    vf_loss = ppo.value_loss(values.float(), old_values, returns, mask, cfg.value_clip)
                    self.engine.backward(pg_loss + cfg.vf_coef * vf_loss)
                    self.engine.step()
                    entropy = ppo.masked_mean(ppo.entropy_from_logits(logits.detach()), mask)
                    for name, value in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("clip_fraction", clip_fraction),
                                        ("approx_kl", approx_kl), ("entropy", entropy)):
                        stats[name].append(float(value.detach()))
        return {name: float(np.mean(values)) for name, values in stats.items()}

    def _lm_state_dict(self) -> dict | None:
        """The LM's weights (no value head) on rank 0, gathered from every rank under ZeRO-3."""
        if self.cfg.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # a collective: every rank calls it
        else:
            state = self.engine.module.state_dict() if self.rank == 0 else None
        if self.rank != 0:
            return None
        return {name[len("lm."):]: tensor.detach().to("cpu", copy=True)
                for name, tensor in state.items() if name.startswith("lm.")}

    def weights(self) -> list | None:
        """Rank 0: [a reference to the LM's weights in the object store]; other ranks: None."""
        state = self._lm_state_dict()
        return None if state is None else [ray.put(state)]

    def save(self, folder: str) -> None:
        self.engine.save_checkpoint(folder, tag="engine")

    def load(self, folder: str) -> None:
        path, _ = self.engine.load_checkpoint(folder, tag="engine")
        if path is None:
            raise RuntimeError(f"no learner checkpoint in {folder}")

    def export(self, dest: str, tokenizer_dir: str) -> None:
        from secondthought.models.lm import export_hf

        state = self._lm_state_dict()
        if state is not None:
            export_hf(self.engine.module.lm, state, Path(tokenizer_dir), Path(dest))
