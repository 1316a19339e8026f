"""``secondthought rl``: the driver of the RL stage.

Each iteration: rollout (workers sample completions with weights v) -> score (discriminator,
edit validity, reference and learner log-probabilities) -> advantages (GAE, here) -> PPO update
(learner group) -> discriminator update -> weight sync (v+1, through the object store).
Writes ``out/model`` (the refined policy, Hugging Face format), ``metrics.jsonl``, ``tensorboard/``,
``rl.png``, ``summary.json`` and ``checkpoints/`` (``--resume`` continues from the newest).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from secondthought.config import ConfigError, RayConfig, RLConfig, training_dirs
from secondthought.data.schema import judge_held_out
from secondthought.rl import ppo
from secondthought.rl.experience import Sample, padded, shards, unpadded
from secondthought.rl.reward import Scored, completion_pair, discriminator_pair, load_reward_function, validity
from secondthought.runtime import ray_session
from secondthought.tracking import Tracker, figure, label, read_metrics

SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


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


def load_prompts(prepared: Path) -> Prompts:
    """Training triples, less the half held out for the evaluation judge."""
    from secondthought.prepare import first_chains

    forward, reverse = first_chains(prepared, "train", ["context", "source", "target", "chain"])
    rows = [r for r in forward if not judge_held_out(r["id"])]
    if not rows:
        raise ConfigError(f"{prepared}/data/train holds no forward chains to take prompts from")
    negatives = {k: (r["context"], r["source"], r["chain"], r["target"])
                 for k, r in reverse.items() if not judge_held_out(k)}
    return Prompts([r["id"] for r in rows], [r["context"] for r in rows], [r["source"] for r in rows],
                   [r["target"] for r in rows], [r["chain"] for r in rows], [r["prompt_ids"] for r in rows],
                   negatives)


@dataclass
class LoopState:
    iteration: int = 0
    kl_coef: float = 0.0


def placement(cfg: RLConfig, cpus: float) -> tuple[list[dict], dict[str, list[tuple[int, float]]]]:
    """Placement-group bundles and, for each role, (bundle index, share of the bundle) per actor.

    Colocated: bundle i holds rollout worker i and learner i (and bundle 0 the reference and the
    discriminator), sharing its CPUs/GPU. Otherwise every actor has a bundle of its own.
    """
    gpu = 1.0 if cfg.use_gpu else 0.0
    roles = {"rollout": cfg.rollout_workers, "learner": cfg.learner_workers, "reference": 1, "discriminator": 1}
    if not cfg.colocate:
        bundles, where = [], {}
        for role, n in roles.items():
            where[role] = [(len(bundles) + k, 1.0) for k in range(n)]
            bundles += [{"CPU": 1.0, "GPU": gpu} for _ in range(n)]
        return [{k: v for k, v in b.items() if v} for b in bundles], where
    n = max(cfg.rollout_workers, cfg.learner_workers)
    members: list[list[str]] = [[] for _ in range(n)]
    for role, count in roles.items():
        for k in range(count):
            members[k].append(role)
    where = {role: [] for role in roles}
    for index, slot in enumerate(members):
        for role in slot:
            where[role].append((index, 1.0 / len(slot)))
    bundle = {"CPU": cpus / n, "GPU": gpu}
    return [{k: v for k, v in bundle.items() if v} for _ in range(n)], where


class RLRun:
    """The actors of one run and the loop that drives them."""

    def __init__(self, prepared: Path, policy: Path, cfg: RLConfig, out: Path, local: bool):
        from transformers import AutoTokenizer

        self.prepared, self.policy, self.cfg, self.out, self.local = prepared, policy, cfg, out, local
        self.tokenizer = AutoTokenizer.from_pretrained(policy)
        self.prompts = load_prompts(prepared)
        self.reward_fn = None if cfg.reward in ("adversarial", "validity") else load_reward_function(cfg.reward)
        self.pg, self.weights, self.version = None, None, None

    # -- actors -------------------------------------------------------------------------------------
    def start(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from secondthought.rl.actors import Discriminator, Learner, Reference, RolloutWorker

        cfg = self.cfg
        cpus = min(ray.cluster_resources().get("CPU", 1), 8 * max(cfg.rollout_workers, cfg.learner_workers))
        bundles, where = placement(cfg, cpus)
        self.pg = placement_group(bundles, strategy="PACK")
        ray.get(self.pg.ready(), timeout=600)

        def options(role: str, k: int, **extra) -> tuple[dict, int]:
            """Ray options of an actor, and its torch threads on a CPU: the rollout workers generate side by
            side, one bundle's CPUs each; the other roles work while the rollout workers wait, so colocated
            they may use every CPU of the group."""
            index, share = where[role][k]
            cpu = bundles[index].get("CPU", 0) * share
            threads = bundles[index].get("CPU", 1) if role == "rollout" or not cfg.colocate else cpus
            return {"num_cpus": cpu, "num_gpus": bundles[index].get("GPU", 0) * share,
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=index),
                    **extra}, max(1, int(threads))

        fault_marker = str(self.out / "fault-injected")
        sampling = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k,
                    "top_p": cfg.top_p, "batch_size": cfg.rollout_batch_size}
        restarts = {"max_restarts": cfg.max_restarts, "max_task_retries": 0}
        self.rollouts = []
        for k in range(cfg.rollout_workers):
            opts, cpu = options("rollout", k, **restarts)
            self.rollouts.append(RolloutWorker.options(**opts).remote(
                str(self.policy), sampling, cpu, cfg.use_gpu, k,
                cfg.fault_injection_iteration if cfg.fault_injection_actor == "rollout" else None, fault_marker))
        opts, cpu = options("reference", 0, **restarts)
        self.reference = Reference.options(**opts).remote(str(self.policy), cpu, cfg.use_gpu, cfg.temperature,
                                                          cfg.micro_batch_size)
        self.discriminator = None
        if cfg.reward == "adversarial":
            opts, cpu = options("discriminator", 0)
            self.discriminator = Discriminator.options(**opts).remote(cfg.discriminator, cfg.disc_lr, cpu, cfg.use_gpu,
                                                                      cfg.seed, cfg.trust_remote_code)
        self.learners = []
        for k in range(cfg.learner_workers):
            opts, cpu = options("learner", k)
            self.learners.append(Learner.options(**opts).remote(asdict(cfg), str(self.policy), k,
                                                                cfg.learner_workers, cpu, fault_marker))
        if self.local:  # one machine: rendezvous through a file, so no TCP store listens on every address
            rendezvous = self.out / f"rendezvous-{uuid.uuid4().hex}"
            init_method = f"file://{rendezvous}"
        else:
            init_method = ray.get(self.learners[0].address.remote())
        ray.get([learner.setup.remote(init_method) for learner in self.learners])
        if self.local:
            rendezvous.unlink(missing_ok=True)

    def stop(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in [*getattr(self, "rollouts", []), *getattr(self, "learners", []),
                      getattr(self, "reference", None), getattr(self, "discriminator", None)]:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    def sync(self, version: int) -> float:
        """Send the learners' weights to every rollout worker as version ``version``; returns seconds."""
        import ray

        started = time.time()
        refs = ray.get([learner.weights.remote() for learner in self.learners])
        self.weights, self.version = refs[0][0], version
        ray.get([worker.set_weights.remote(version, self.weights) for worker in self.rollouts])
        return time.time() - started

    def _retrying(self, name: str, submit):
        """ray.get(submit()), submitting again after the actor died and Ray restarted it."""
        import ray
        from ray.exceptions import RayActorError

        for attempt in range(self.cfg.max_restarts + 1):
            try:
                return ray.get(submit(attempt))
            except RayActorError as e:
                if attempt == self.cfg.max_restarts:
                    raise
                print(f"[rl] {name} died ({type(e).__name__}); restarted, redoing its work", flush=True)

    # -- one iteration ------------------------------------------------------------------------------
    def rollout(self, iteration: int, rows: list[int]) -> tuple[list[Sample], float]:
        from concurrent.futures import ThreadPoolExecutor

        cfg = self.cfg
        parts = shards(rows, len(self.rollouts))

        def run(k: int) -> dict:
            worker, prompts = self.rollouts[k], [self.prompts.prompt_ids[i] for i in parts[k]]
            seed = cfg.seed * 1_000_003 + iteration * 1009 + k

            def submit(attempt: int):
                if attempt:  # a restarted worker holds the initial weights: send the current ones first
                    worker.set_weights.remote(self.version, self.weights)
                return worker.generate.remote(self.version, prompts, seed, iteration)

            return self._retrying(f"rollout worker {k}", submit)

        with ThreadPoolExecutor(len(self.rollouts)) as pool:
            results = list(pool.map(run, range(len(self.rollouts))))
        samples = [Sample(self.prompts.prompt_ids[i], completion, index=i)
                   for part, result in zip(parts, results) for i, completion in zip(part, result["completions"])]
        return samples, max(r["seconds"] for r in results)

    def _scored(self, samples: list[Sample]) -> list[Scored]:
        eos = self.tokenizer.eos_token_id
        items = []
        for s in samples:
            ids = s.completion_ids[:-1] if s.completion_ids and s.completion_ids[-1] == eos else s.completion_ids
            p = self.prompts
            items.append(Scored(p.context[s.index], p.source[s.index], p.target[s.index],
                                self.tokenizer.decode(ids, skip_special_tokens=False), tuple(s.completion_ids)))
        return items

    def score(self, samples: list[Sample]) -> tuple[np.ndarray, dict, list[Scored]]:
        """Sequence scores (the reward before the KL penalty) and their parts."""
        import ray

        cfg = self.cfg
        items = self._scored(samples)
        parts: dict[str, float] = {}
        if self.reward_fn is not None:
            scores = np.asarray(self.reward_fn(items), dtype=np.float32)
            if scores.shape != (len(items),) or not np.all(np.isfinite(scores)):
                raise ValueError(f"--rl.reward {cfg.reward} must return one finite float per sample")
            return scores, {"reward_custom": float(scores.mean())}, items
        valid = validity(items)
        scores = cfg.validity_weight * valid
        parts["validity"] = float(valid.mean())
        parts["consistent_rate"] = float((valid == 1).mean())
        if self.discriminator is not None:
            logodds = ray.get(self.discriminator.logodds.remote([completion_pair(i) for i in items]))
            logodds = np.clip(logodds, -cfg.disc_clip, cfg.disc_clip)
            scores = scores + logodds
            parts["disc_logodds"] = float(logodds.mean())
        return scores.astype(np.float32), parts, items

    def attach_values(self, samples: list[Sample]) -> None:
        """Reference log-probabilities (one actor) and old log-probabilities + values (the learners)."""
        import ray

        learner_parts = shards(samples, len(self.learners))
        forwards = [learner.forward.remote(part) for learner, part in zip(self.learners, learner_parts)]
        if self.cfg.colocate:  # sharing the devices, the reference waits for the learners rather than competing
            ray.wait(forwards, num_returns=len(forwards))
        ref = self._retrying("reference", lambda attempt: self.reference.logprobs.remote(samples))
        for part, (logprobs, values) in zip(learner_parts, ray.get(forwards)):
            for s, lp, v in zip(part, logprobs, values):
                s.logprobs, s.values = lp, v
        for s, lp in zip(samples, ref):
            s.ref_logprobs = lp

    def advantages(self, samples: list[Sample], scores: np.ndarray, kl_coef: float) -> dict:
        import torch

        cfg = self.cfg
        width = max(len(s.completion_ids) for s in samples)
        mask = torch.from_numpy(padded([np.ones(len(s.completion_ids)) for s in samples], width))
        logp, ref, values = (torch.from_numpy(padded([getattr(s, n) for s in samples], width))
                             for n in ("logprobs", "ref_logprobs", "values"))
        kl = ppo.kl_penalty(logp, ref, cfg.kl_estimator) * mask
        rewards = ppo.token_rewards(torch.from_numpy(scores), kl, mask, kl_coef)
        adv, returns = ppo.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            adv = ppo.masked_whiten(adv, mask)
        for s, a, r in zip(samples, unpadded(adv.numpy(), samples), unpadded(returns.numpy(), samples)):
            s.advantages, s.returns = a, r
        return {"kl": float(kl.sum(dim=1).mean()), "reward": float(rewards.sum(dim=1).mean()),
                "score": float(scores.mean())}

    def update_discriminator(self, iteration: int, rows: list[int], items: list[Scored]) -> dict:
        import ray

        if self.discriminator is None:
            return {}
        p = self.prompts
        gold = [discriminator_pair(p.context[i], p.source[i], p.chain[i], p.target[i]) for i in rows]
        reverse = [p.reverse[p.ids[i]] for i in rows if p.ids[i] in p.reverse]
        policy = [completion_pair(item) for item in items]
        if reverse:  # half policy samples, half aligned -> unaligned chains
            half = len(gold) // 2
            negatives = policy[:half] + [discriminator_pair(*r) for r in reverse[: len(gold) - half]]
        else:
            negatives = policy
        return ray.get(self.discriminator.update.remote(gold, negatives, self.cfg.disc_steps,
                                                        self.cfg.seed + iteration))

    def iteration(self, i: int, state: LoopState) -> dict:
        import ray

        cfg = self.cfg
        rows = self.prompts.batch(i, cfg.prompts_per_iteration, cfg.seed)
        t0 = time.time()
        samples, gen_seconds = self.rollout(i, rows)
        t1 = time.time()
        scores, parts, items = self.score(samples)
        self.attach_values(samples)
        adv_stats = self.advantages(samples, scores, state.kl_coef)
        t2 = time.time()
        learn = ray.get([learner.train.remote(part, cfg.seed + i, i)
                         for learner, part in zip(self.learners, shards(samples, len(self.learners)))])
        t3 = time.time()
        disc = self.update_discriminator(i, rows, items)
        t4 = time.time()
        sync_seconds = self.sync(i)
        tokens = sum(len(s.completion_ids) for s in samples)
        metrics = {
            **adv_stats, **parts, "kl_coef": state.kl_coef,
            **{k: float(np.mean([m[k] for m in learn])) for k in learn[0]}, **disc,
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
        import ray

        folder = self.out / CHECKPOINTS / f"iteration_{state.iteration:06d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        calls = [learner.save.remote(str(folder / "learner")) for learner in self.learners]
        if self.discriminator is not None:
            calls.append(self.discriminator.save.remote(str(folder / "discriminator")))
        ray.get(calls)
        (folder / "state.json").write_text(json.dumps(asdict(state)))  # written last: marks it complete
        for old in sorted(p.parent for p in (self.out / CHECKPOINTS).glob("*/state.json"))[:-2]:
            shutil.rmtree(old)

    def newest_checkpoint(self) -> Path | None:
        done = sorted(p.parent for p in (self.out / CHECKPOINTS).glob("*/state.json"))
        return done[-1] if done else None

    def restore(self, folder: Path) -> LoopState:
        import ray

        calls = [learner.load.remote(str(folder / "learner")) for learner in self.learners]
        if self.discriminator is not None:
            calls.append(self.discriminator.load.remote(str(folder / "discriminator")))
        ray.get(calls)
        return LoopState(**json.loads((folder / "state.json").read_text()))

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> LoopState:
        from ray.exceptions import RayActorError

        cfg = self.cfg
        failures = 0
        while True:
            self.start()
            try:
                return self._loop()
            except RayActorError as e:
                failures += 1
                if failures > cfg.max_failures:
                    raise
                print(f"[rl] a learner or the discriminator died ({type(e).__name__}): rolling back to the last "
                      f"checkpoint ({failures}/{cfg.max_failures})", flush=True)
            finally:
                self.stop()

    def _loop(self) -> LoopState:
        import ray

        cfg = self.cfg
        checkpoint = self.newest_checkpoint()
        state = self.restore(checkpoint) if checkpoint else LoopState(kl_coef=cfg.kl_coef)
        if checkpoint:
            print(f"[rl] resumed at iteration {state.iteration} from {checkpoint}", flush=True)
        self.sync(state.iteration)
        tracker = Tracker(cfg, self.out, 0, cfg.iterations, state.iteration, unit="iteration")
        try:
            while state.iteration < cfg.iterations:
                metrics = self.iteration(state.iteration + 1, state)
                tracker.log(state.iteration, metrics, show=state.iteration % cfg.log_every == 0)
                if state.iteration % cfg.checkpoint_every == 0 or state.iteration == cfg.iterations:
                    self.checkpoint(state)
            ray.get([learner.export.remote(str(self.out / "model"), str(self.policy)) for learner in self.learners])
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


def run_rl(prepared: str | Path, policy: str | Path, cfg: RLConfig, ray_cfg: RayConfig, out: str | Path,
           resume: bool = False, overwrite: bool = False) -> dict:
    """Refine ``policy`` (an SFT model folder) on the prompts of ``prepared``; returns the summary."""
    policy = Path(policy).expanduser().resolve()
    if not (policy / "config.json").is_file():
        raise ConfigError(f"--policy {policy} is not a model folder: give the model/ folder of `secondthought sft`")
    prepared, out = training_dirs(prepared, out, SUMMARY, asdict(cfg), resume, overwrite)
    started = time.time()
    with ray_session(ray_cfg):
        run = RLRun(prepared, policy, cfg, out, local=ray_cfg.address is None)
        if cfg.reward == "adversarial" and not run.prompts.reverse:
            print("[rl] the prepared data has no reversed chains (prepare --prepare.reverse true): the discriminator "
                  "gets the policy's samples as its only negatives", flush=True)
        run.run()
    rows = read_metrics(out / "metrics.jsonl", "iteration")
    plot_rewards(rows, out / "rl.png")
    first, last = rows[min(rows)], rows[max(rows)]
    summary = {
        "model": str(out / "model"), "policy": str(policy), "iterations": max(rows), "prompts": len(run.prompts),
        "first_score": first["score"], "last_score": last["score"], "last_kl": last["kl"],
        "mean_rollout_tokens_per_s": float(np.mean([r["rollout_tokens_per_s"] for r in rows.values()])),
        "seconds": round(time.time() - started, 1), "plot": str(out / "rl.png"), "tensorboard": str(out / "tensorboard"),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
