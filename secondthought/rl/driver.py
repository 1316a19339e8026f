"""``secondthought rl``, the driver: the actor groups of a run and the loop that drives them.

Each iteration is seven numbered steps, each one call: rollout, score, log-probabilities and values,
advantages, PPO update, discriminator update, weight sync. Writes ``out/model`` (the refined policy,
Hugging Face format), ``metrics.jsonl``, ``tensorboard/``, ``rl.png``, ``summary.json`` and
``checkpoints/`` (``--resume`` continues from the newest).
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayActorError

from secondthought import console
from secondthought.chains.formats import edit_format
from secondthought.config import ConfigError, RayConfig, RLConfig
from secondthought.decoding.constraints import Constrain
from secondthought.decoding.policy import completion_text
from secondthought.rl import ppo
from secondthought.rl.actors import Discriminator, Learner, Reference, RolloutWorker
from secondthought.rl.experience import Sample, attach_advantages, shards
from secondthought.rl.group import ActorGroup, retrying
from secondthought.rl.placement import Placement
from secondthought.rl.prompts import Prompts, load_prompts
from secondthought.rl.reward import (
    Scored,
    completion_pair,
    discriminator_pair,
    load_reward_function,
    reverse_negative,
    validity,
)
from secondthought.runs import (
    MODEL_INFO,
    PreparedDir,
    TrainingDir,
    model_folder,
    read_model_info,
    write_json,
    write_model_info,
)
from secondthought.runtime import ray_session
from secondthought.tracking import Tracker, figure, label, read_metrics
from secondthought.training.engine import STATE, digests, newest_checkpoint, verify


@dataclass
class LoopState:
    iteration: int = 0
    kl_coef: float = 0.0


class RLRun:
    """The actor groups of one run and the loop that drives them."""

    def __init__(self, prepared: PreparedDir, policy: Path, cfg: RLConfig, run: TrainingDir):
        from transformers import AutoTokenizer

        self.policy, self.cfg, self.run_dir = policy, cfg, run
        self.tokenizer = AutoTokenizer.from_pretrained(policy)
        self.format = edit_format(edit_format_of(policy, prepared))
        self.prompts: Prompts = load_prompts(prepared)
        # every tenth prompt: the discriminator never learns from its gold and reversed chains (its accuracy there
        # is logged); a prompt table too small for a tenth has none
        self.disc_held_out = list(range(0, len(self.prompts), 10)) if len(self.prompts) >= 10 else []
        self.warmup: dict | None = None
        self.reward_fn = None if cfg.reward in ("adversarial", "validity") else load_reward_function(cfg.reward)
        self.placement, self.weights, self.version = None, None, None
        self.nodes: dict[str, list[str]] = {}
        self.rollouts = self.learners = self.reference = self.discriminator = None

    # -- actors -------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg, policy = self.cfg, str(self.policy)

        def fault(role: str, k: int):  # the first actor of the chosen role dies once, for testing
            injected = cfg.fault_injection_iteration is not None and cfg.fault_injection_actor == role and k == 0
            return (cfg.fault_injection_iteration, str(self.run_dir.fault_marker)) if injected else None

        self.placement = Placement(cfg)
        sampling = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k,
                    "top_p": cfg.top_p, "batch_size": cfg.rollout_batch_size}
        restartable = {"max_restarts": cfg.max_restarts, "max_task_retries": 0}
        self.rollouts = ActorGroup.spawn(
            RolloutWorker, "rollout", cfg.rollout_workers, self.placement,
            lambda k, threads: (policy, sampling, threads, cfg.use_gpu, k, fault("rollout", k),
                                Constrain(cfg.force_target) if cfg.decoding == "constrained" else None,
                                self.format.name),
            **restartable)
        self.reference = ActorGroup.spawn(
            Reference, "reference", 1, self.placement,
            lambda k, threads: (policy, threads, cfg.use_gpu, cfg.temperature, cfg.micro_batch_size,
                                fault("reference", k)), **restartable)
        if cfg.reward == "adversarial":
            self.discriminator = ActorGroup.spawn(
                Discriminator, "discriminator", 1, self.placement,
                lambda k, threads: (cfg.discriminator, cfg.disc_lr, threads, cfg.use_gpu, cfg.seed,
                                    cfg.trust_remote_code, fault("discriminator", k)))
        self.learners = ActorGroup.spawn(
            Learner, "learner", cfg.learner_workers, self.placement,
            lambda k, threads: (asdict(cfg), policy, k, cfg.learner_workers, threads, fault("learner", k)))
        self.learners.run("setup", ray.get(self.learners[0].address.remote()))
        groups = {"rollout": self.rollouts, "reference": self.reference, "discriminator": self.discriminator,
                  "learner": self.learners}
        self.nodes = {role: group.nodes() for role, group in groups.items() if group is not None}

    def stop(self) -> None:
        for group in (self.rollouts, self.learners, self.reference, self.discriminator):
            if group is not None:
                group.kill()
        if self.placement is not None:
            self.placement.remove()
            self.placement = None

    # -- the seven steps of an iteration ------------------------------------------------------------
    def rollout(self, iteration: int, rows: list[int]) -> tuple[list[Sample], float]:
        """1. Every rollout worker samples one completion for each prompt of its slice."""
        cfg = self.cfg
        parts = shards(rows, len(self.rollouts))

        def run(k: int) -> dict:
            worker, prompts = self.rollouts[k], [self.prompts.prompt_ids[i] for i in parts[k]]
            sources = [self.prompts.source[i] for i in parts[k]]
            seed = cfg.seed * 1_000_003 + iteration * 1009 + k

            def submit(attempt: int):
                if attempt:  # a restarted worker holds the initial weights: send the current ones first
                    worker.set_weights.remote(self.version, self.weights)
                return worker.generate.remote(self.version, prompts, seed, iteration, sources)

            return retrying(f"rollout worker {k}", submit, cfg.max_restarts)

        with ThreadPoolExecutor(len(self.rollouts)) as pool:
            results = list(pool.map(run, range(len(self.rollouts))))
        samples = []
        for part, result in zip(parts, results):
            allowed = result["allowed"] if result["allowed"] is not None else [None] * len(part)
            samples += [Sample(self.prompts.prompt_ids[i], completion, index=i, allowed=mask)
                        for i, completion, mask in zip(part, result["completions"], allowed)]
        return samples, max(r["seconds"] for r in results)

    def score(self, samples: list[Sample]) -> tuple[np.ndarray, dict, list[Scored]]:
        """2. Sequence scores (the reward before the KL penalty) and their parts."""
        cfg, p = self.cfg, self.prompts
        items = [Scored(p.context[s.index], p.source[s.index], p.target[s.index],
                        completion_text(self.tokenizer, s.completion_ids), tuple(s.completion_ids), self.format)
                 for s in samples]
        if self.reward_fn is not None:
            scores = np.asarray(self.reward_fn(items), dtype=np.float32)
            if scores.shape != (len(items),) or not np.all(np.isfinite(scores)):
                raise ValueError(f"--rl.reward {cfg.reward} must return one finite float per sample")
            return scores, {"reward_custom": float(scores.mean())}, items
        valid = validity(items)
        scores = cfg.validity_weight * valid
        parts = {"validity": float(valid.mean()), "consistent_rate": float((valid == 1).mean())}
        if self.discriminator is not None:
            logodds = self.discriminator.run("logodds", [completion_pair(i) for i in items])[0]
            parts["disc_policy_accuracy"] = float((logodds < 0).mean())  # new samples, before it learns from them
            logodds = np.clip(logodds, -cfg.disc_clip, cfg.disc_clip)
            scores = scores + logodds
            parts["disc_logodds"] = float(logodds.mean())
        return scores.astype(np.float32), parts, items

    def logprobs_and_values(self, samples: list[Sample], iteration: int) -> None:
        """3. Reference log-probabilities (one actor) and old log-probabilities + values (the learners)."""
        parts, forwards = self.learners.call_sliced("forward", samples)
        if self.cfg.colocate:  # sharing the devices, the reference waits for the learners rather than competing
            ray.wait(forwards, num_returns=len(forwards))
        ref = retrying("reference", lambda attempt: self.reference[0].logprobs.remote(samples, iteration),
                       self.cfg.max_restarts)
        for part, (logprobs, values) in zip(parts, ray.get(forwards)):
            for s, lp, v in zip(part, logprobs, values):
                s.logprobs, s.values = lp, v
        for s, lp in zip(samples, ref):
            s.ref_logprobs = lp

    # 4. advantages: experience.attach_advantages (pure)

    def learn(self, samples: list[Sample], iteration: int) -> dict:
        """5. PPO epochs on the learners, each over its slice of the samples."""
        stats = self.learners.run_sliced("train", samples, self.cfg.seed + iteration, iteration)
        return {k: float(np.mean([m[k] for m in stats])) for k in stats[0]}

    def gold_and_reversed(self, rows: list[int]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The discriminator's pairs of ``rows``: gold chains, and reversed (aligned -> unaligned) ones."""
        p = self.prompts
        fmt = self.format
        gold = [discriminator_pair(p.context[i], p.source[i], p.chain[i], p.target[i], fmt) for i in rows]
        return gold, [reverse_negative(*p.reverse[p.ids[i]], fmt) for i in rows if p.ids[i] in p.reverse]

    def warm_start(self) -> dict:
        """0. Before the first iteration: the discriminator learns gold from reversed chains (never on the
        held-out tenth), so that its first rewards already tell edits towards the norm from edits away from it."""
        cfg = self.cfg
        held = set(self.disc_held_out)
        gold, reversed_ = self.gold_and_reversed([i for i in range(len(self.prompts)) if i not in held])
        held_gold, held_reversed = self.gold_and_reversed(self.disc_held_out)
        check = (lambda: self.discriminator.run("accuracy", held_gold, held_reversed)[0]) if held_reversed else None
        before = check() if check else None
        stats = self.discriminator.run("update", gold, reversed_, cfg.disc_warmup_epochs, cfg.seed, 0,
                                       2 * cfg.prompts_per_iteration)[0]  # batches the size of an iteration's
        done = {"epochs": cfg.disc_warmup_epochs, "pairs": len(gold) + len(reversed_), "held_out_pairs":
                len(held_gold) + len(held_reversed), "accuracy_before": before, "accuracy_after": check() if check
                else None, "train_accuracy": stats.get("disc_accuracy")}
        console.say(f"[rl] discriminator warm start: {done['pairs']} pairs, {done['epochs']} epochs; accuracy on "
                    f"{done['held_out_pairs']} held-out pairs {before if before is None else round(before, 3)} -> "
                    f"{done['accuracy_after'] if before is None else round(done['accuracy_after'], 3)}")
        return done

    def update_discriminator(self, iteration: int, rows: list[int], items: list[Scored]) -> dict:
        """6. Gold chains against half policy samples, half aligned -> unaligned chains (GAIL-style); first its
        accuracy on the held-out pairs it never learns from."""
        if self.discriminator is None:
            return {}
        held_gold, held_reversed = self.gold_and_reversed(self.disc_held_out)
        checked = ({"disc_heldout_accuracy": self.discriminator.run("accuracy", held_gold, held_reversed)[0]}
                   if held_reversed else {})
        held = set(self.disc_held_out)
        gold, reverse = self.gold_and_reversed([i for i in rows if i not in held])
        policy = [completion_pair(item) for item in items]
        if reverse:
            half = len(gold) // 2
            negatives = policy[:half] + reverse[: len(gold) - half]
        else:
            negatives = policy
        return checked | self.discriminator.run("update", gold, negatives, self.cfg.disc_steps,
                                                self.cfg.seed + iteration, iteration)[0]

    def sync(self, version: int) -> float:
        """7. The learners' weights to every rollout worker as version ``version``; returns seconds."""
        started = time.time()
        self.weights, self.version = self.learners.run("weights")[0][0], version
        self.rollouts.run("set_weights", version, self.weights)
        return time.time() - started

    def iteration(self, i: int, state: LoopState) -> dict:
        cfg = self.cfg
        rows = self.prompts.batch(i, cfg.prompts_per_iteration, cfg.seed)
        t0 = time.time()
        samples, gen_seconds = self.rollout(i, rows)                                          # 1
        t1 = time.time()
        scores, parts, items = self.score(samples)                                            # 2
        self.logprobs_and_values(samples, i)                                                  # 3
        adv_stats = attach_advantages(samples, scores, state.kl_coef, cfg.kl_estimator, cfg.gamma, cfg.lam,  # 4
                                      cfg.whiten_advantages)
        t2 = time.time()
        learn = self.learn(samples, i)                                                        # 5
        t3 = time.time()
        disc = self.update_discriminator(i, rows, items)                                      # 6
        t4 = time.time()
        sync_seconds = self.sync(i)                                                           # 7
        tokens = sum(len(s.completion_ids) for s in samples)
        metrics = {
            **adv_stats, **parts, "kl_coef": state.kl_coef, **learn, **disc,
            "completion_tokens": tokens / len(samples),
            "rollout_tokens_per_s": tokens / max(gen_seconds, 1e-9), "rollout_s": t1 - t0, "score_s": t2 - t1,
            "learn_s": t3 - t2, "disc_s": t4 - t3, "sync_s": sync_seconds, "iteration_s": time.time() - t0,
        }
        kl_controller = ppo.AdaptiveKLController(state.kl_coef, cfg.target_kl, cfg.kl_horizon)
        state.kl_coef = kl_controller.update(adv_stats["kl"], len(samples))
        state.iteration = i
        return metrics

    # -- checkpoints --------------------------------------------------------------------------------
    def checkpoint(self, state: LoopState) -> None:
        folder = self.run_dir.checkpoints / f"iteration_{state.iteration:06d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        calls = self.learners.call("save", str(folder / "learner"))
        if self.discriminator is not None:
            calls += self.discriminator.call("save", str(folder / "discriminator"))
        ray.get(calls)
        write_json(folder / STATE, {**asdict(state), "sha256": digests(folder)})  # written last: marks it complete
        for old in sorted(p.parent for p in self.run_dir.checkpoints.glob(f"*/{STATE}"))[:-2]:
            shutil.rmtree(old)

    def restore(self, folder: Path) -> LoopState:
        saved = json.loads((folder / STATE).read_text())
        verify(folder, saved.pop("sha256", {}), ignore=(STATE,))  # before any torch.load
        calls = self.learners.call("load", str(folder / "learner"))
        if self.discriminator is not None:
            calls += self.discriminator.call("load", str(folder / "discriminator"))
        ray.get(calls)
        return LoopState(**saved)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> LoopState:
        """The loop, with fresh actors from the last checkpoint after a learner or the discriminator died."""
        failures = 0
        while True:
            self.start()
            try:
                return self._loop()
            except RayActorError as e:
                failures += 1
                if failures > self.cfg.max_failures:
                    raise
                console.say(f"[rl] a learner or the discriminator died ({type(e).__name__}): rolling back to the "
                            f"last checkpoint ({failures}/{self.cfg.max_failures})")
            finally:
                self.stop()

    def _loop(self) -> LoopState:
        cfg = self.cfg
        checkpoint = newest_checkpoint(self.run_dir.checkpoints, "iteration")
        state = self.restore(checkpoint) if checkpoint else LoopState(kl_coef=cfg.kl_coef)
        if checkpoint:
            console.say(f"[rl] resumed at iteration {state.iteration} from {checkpoint}")
        elif self.discriminator is not None and cfg.disc_warmup_epochs:
            self.warmup = self.warm_start()                                                    # 0
        self.sync(state.iteration)
        tracker = Tracker(cfg, self.run_dir.path, 0, cfg.iterations, state.iteration, unit="iteration")
        try:
            while state.iteration < cfg.iterations:
                metrics = self.iteration(state.iteration + 1, state)
                tracker.log(state.iteration, metrics, show=state.iteration % cfg.log_every == 0)
                if state.iteration % cfg.checkpoint_every == 0 or state.iteration == cfg.iterations:
                    self.checkpoint(state)
            self.learners.run("export", str(self.run_dir.model), str(self.policy))
        finally:
            tracker.close()
        return state


def plot_rewards(rows: dict[int, dict], png: Path) -> None:
    its = sorted(rows)
    with figure(png, 2, 1, figsize=(7, 6), sharex=True) as (top, bottom):
        for name in ("score", "disc_logodds", "validity", "reward_custom"):
            if name in rows[its[0]]:
                top.plot(its, [rows[i][name] for i in its], "o-", label=name, markersize=3)
        label(top, None, "reward (per sequence)")
        bottom.plot(its, [rows[i]["kl"] for i in its], "o-", color="tab:red", label="KL to SFT reference", markersize=3)
        label(bottom, "iteration", "KL (per sequence)")


def edit_format_of(policy: Path, prepared: PreparedDir) -> str:
    """The name of the format the run's chains are written in: the policy's own way (a model folder of ``sft`` records it), which the
    prepared data must share; a folder that records none (not trained here) learns the data's."""
    if not (policy / MODEL_INFO).is_file():
        return prepared.edit_format
    info = read_model_info(policy)
    if info.writes_chains and info.edit_format != prepared.edit_format:
        raise ConfigError(f"--policy {policy} writes {info.edit_format!r} chains but {prepared.path} was prepared "
                          f"with --prepare.edit_format {prepared.edit_format}: prepare the data in the policy's way")
    return info.edit_format


def run_rl(prepared: str | Path, policy: str | Path, cfg: RLConfig, ray_cfg: RayConfig, out: str | Path,
           resume: bool = False, overwrite: bool = False) -> dict:
    """Refine ``policy`` (an SFT model folder) on the prompts of ``prepared``; returns the summary."""
    policy = model_folder(policy, "--policy")
    prepared = PreparedDir.open(prepared)
    edit_format = edit_format_of(policy, prepared)
    if cfg.reward not in ("adversarial", "validity"):
        load_reward_function(cfg.reward)  # a reward that does not import fails here, before any Ray work
    run_dir = TrainingDir.start(out, asdict(cfg), resume, overwrite)
    started = time.time()
    with ray_session(ray_cfg, shared=run_dir.path):
        run = RLRun(prepared, policy, cfg, run_dir)
        if cfg.reward == "adversarial" and not run.prompts.reverse:
            console.say("[rl] the prepared data has no reversed chains (prepare --prepare.reverse true): the "
                        "discriminator gets the policy's samples as its only negatives")
        run.run()
    write_model_info(run_dir.model, replace(read_model_info(policy), stage="rl", trained_from=str(policy),
                                            edit_format=edit_format))
    rows = read_metrics(run_dir.metrics, "iteration")
    plot_rewards(rows, run_dir.path / "rl.png")
    first, last = rows[min(rows)], rows[max(rows)]
    summary = {
        "model": str(run_dir.model), "policy": str(policy), "iterations": max(rows), "prompts": len(run.prompts),
        "first_score": first["score"], "last_score": last["score"], "last_kl": last["kl"],
        "mean_rollout_tokens_per_s": float(np.mean([r["rollout_tokens_per_s"] for r in rows.values()])),
        "seconds": round(time.time() - started, 1), "plot": str(run_dir.path / "rl.png"),
        "tensorboard": str(run_dir.path / "tensorboard"), "nodes": run.nodes,
        "discriminator": {"warm_start": run.warmup, **{k: last[k] for k in ("disc_heldout_accuracy",
                                                                            "disc_policy_accuracy") if k in last}},
    }
    run_dir.write_summary(summary)  # last: marks the run done
    return summary
