"""``secondthought sft``, the driver: fine-tune the LM on prepared chains of edits with Ray Train and
DeepSpeed (each worker runs ``sft.worker.train_loop_per_worker``).

Reads ``prepared/data/{train,eval}`` (forward chains only), trains with N workers, and writes to
``out/``: ``model/`` (the best checkpoint by eval loss, Hugging Face format, safetensors),
``metrics.jsonl``, ``tensorboard/``, ``loss.png``, ``summary.json``, and Ray Train's checkpoints
under ``ray/`` (``--resume`` continues from the latest of them).
"""

from __future__ import annotations

import functools
import json
import math
import operator
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from secondthought.chains.text import TGT
from secondthought.config import ConfigError, RayConfig, SFTConfig
from secondthought.runs import WORKERS, ModelInfo, PreparedDir, TrainingDir, is_model_folder, write_model_info
from secondthought.runtime import ray_session
from secondthought.tracking import figure, follow, label, read_metrics
from secondthought.training.batching import micro_batches_per_epoch

RUN_NAME = "sft"


def _dataset(path: Path, limit: int | None = None, costs: list | None = None):
    import ray.data
    from ray.data.expressions import col

    ds = ray.data.read_parquet(str(path), columns=["input_ids", "prompt_len", "direction", "costs"])
    ds = ds.filter(expr=col("direction") == "forward")
    if costs is not None:  # one row per triple: the chain of the first cost set (prepare always keeps it)
        same = [col("costs").list.len() == len(costs)] + [col("costs").list[k] == c for k, c in enumerate(costs)]
        ds = ds.filter(expr=functools.reduce(operator.and_, same))
    ds = ds.select_columns(["input_ids", "prompt_len"])
    return ds.limit(limit) if limit else ds


def cpus_per_worker(num_workers: int, total: float) -> float:
    """1 CPU a worker, or less where that would leave no CPU for the Ray Data tasks that feed them."""
    if total < 2:
        raise ConfigError(f"Ray has {total:g} CPUs: training needs at least 2 (one to read data)")
    return min(1.0, (total - 1) / num_workers)


def plot_losses(by_step: dict[int, dict], png: Path) -> None:
    steps = sorted(by_step)
    with figure(png, figsize=(7, 4)) as ax:
        ax.plot(steps, [by_step[s]["loss"] for s in steps], label="train loss", linewidth=1)
        evals = [s for s in steps if "eval_loss" in by_step[s]]
        ax.plot(evals, [by_step[s]["eval_loss"] for s in evals], "o-", label="eval loss")
        label(ax, "optimizer step", "loss (chain + target tokens)")


def run_sft(prepared: str | Path, cfg: SFTConfig, ray_cfg: RayConfig, out: str | Path,
            resume: bool = False, overwrite: bool = False) -> dict:
    """Train into ``out``; returns the summary (also written to ``out/summary.json``)."""
    from secondthought.models.lm import check_model

    prepared = PreparedDir.open(prepared)
    check_model(cfg.model, "--sft.model")
    run = TrainingDir.start(out, asdict(cfg), resume, overwrite)
    plan, data = _plan(prepared, cfg, run)
    started = time.time()
    with ray_session(ray_cfg, shared=run.path):
        _fit(prepared, cfg, plan, data, run)
    return _finish(prepared, cfg, plan, data, run, time.time() - started)


def _plan(prepared: PreparedDir, cfg: SFTConfig, run: TrainingDir) -> tuple[dict, dict]:
    """The base model (built once), and what every worker needs to know (folders, step counts, token ids); with
    what the data gives (rows, and the cost set that keeps one row per triple where chains are left out)."""
    from transformers import AutoTokenizer

    from secondthought.models.lm import build_base_model

    tokenizer = AutoTokenizer.from_pretrained(prepared.tokenizer)
    if not is_model_folder(run.base):
        build_base_model(cfg.model, tokenizer, run.base, cfg.trust_remote_code, cfg.seed)
    # Without chains the rows of one triple's other cost sets would be copies: keep one per triple.
    one_per_triple = None if cfg.chains else prepared.manifest()["cost_sets"][0]
    n_train = prepared.count_forward("train", one_per_triple)
    n_eval = prepared.count_forward("eval", one_per_triple)
    n_train = min(n_train, cfg.max_train_rows or n_train)
    per_epoch = micro_batches_per_epoch(n_train, cfg.num_workers, cfg.micro_batch_size, cfg.grad_accum,
                                        cfg.bucket_window)
    if per_epoch == 0:
        raise ConfigError(f"{n_train} training chains are too few for {cfg.num_workers} workers x "
                          f"--sft.micro_batch_size {cfg.micro_batch_size} x --sft.grad_accum {cfg.grad_accum}")
    total_steps = cfg.epochs * per_epoch // cfg.grad_accum
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    eval_used = min(n_eval, cfg.max_eval_rows or n_eval)
    if eval_used < cfg.num_workers:
        raise ConfigError(f"the eval split has {n_eval} chains: too few to evaluate on {cfg.num_workers} workers")
    plan = {
        "out": str(run.path), "base_dir": str(run.base), "best_dir": str(run.best), "pad_id": tokenizer.pad_token_id,
        "tgt_id": tokenizer.convert_tokens_to_ids(TGT),
        "micro_batches_per_epoch": per_epoch, "total_steps": total_steps,
        "warmup_steps": int(cfg.warmup_fraction * total_steps), "eval_rows_per_rank": eval_used // cfg.num_workers,
        "checkpoints": str(run.path / "ray" / RUN_NAME),
    }
    return plan, {"train_chains": n_train, "eval_chains": eval_used, "one_per_triple": one_per_triple}


def _fit(prepared: PreparedDir, cfg: SFTConfig, plan: dict, data: dict, run: TrainingDir) -> None:
    """Ray Train's TorchTrainer over the workers' loop (``sft.worker``), with its progress shown."""
    import ray.data
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from secondthought.sft.backend import NodeBoundTorchConfig
    from secondthought.sft.worker import train_loop_per_worker

    ray.data.DataContext.get_current().enable_progress_bars = False  # the workers print their own progress
    cpus = ray.cluster_resources().get("CPU", 0)
    per_worker = cfg.cpus_per_worker or cpus_per_worker(cfg.num_workers, cpus)
    # Ray gives a CPU worker one torch thread; the data feeding it needs little, so a worker that has the
    # machine to itself (few-shot transfer) uses the CPUs the other workers would have had
    plan = {**plan, "torch_threads": max(1, int(cpus // cfg.num_workers))}
    one_per_triple = data["one_per_triple"]
    trainer = TorchTrainer(
        train_loop_per_worker, torch_config=NodeBoundTorchConfig(),
        train_loop_config={"sft": asdict(cfg), "plan": plan},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": per_worker},
                                               placement_strategy=cfg.placement_strategy),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=str(run.path / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": _dataset(prepared.split("train"), cfg.max_train_rows, one_per_triple),
                  "eval": _dataset(prepared.split("eval"), cfg.max_eval_rows, one_per_triple)},
        # Every worker reads the whole (ordered) split and keeps its own rows: a restarted run
        # then sees exactly the same batches and can skip the ones it had done.
        dataset_config=ray.train.DataConfig(datasets_to_split=[],
                                            execution_options=ExecutionOptions(preserve_order=True)),
    )
    with follow(run.metrics, "step", plan["total_steps"], "sft"):
        trainer.fit()


def _finish(prepared: PreparedDir, cfg: SFTConfig, plan: dict, data: dict, run: TrainingDir, seconds: float) -> dict:
    """The best model as out/model with its metadata, the loss plot, and the summary (written last)."""
    if not is_model_folder(run.best):
        raise RuntimeError(f"training ended without an evaluated model in {run.best}")
    shutil.rmtree(run.model, ignore_errors=True)
    shutil.copytree(run.best, run.model)
    write_model_info(run.model, ModelInfo(stage="sft", writes_chains=cfg.chains, edit_format=prepared.edit_format,
                                          direct_targets=cfg.direct_targets if cfg.chains else 0.0,
                                          base_model=cfg.model,
                                          base_folder=str(run.base), trained_from=cfg.model))
    out = run.path
    rows = read_metrics(run.metrics, "step")
    plot_losses(rows, out / "loss.png")
    last = rows[max(rows)]
    evals = [r["eval_loss"] for r in rows.values() if "eval_loss" in r]
    summary = {
        "model": str(run.model), "base_model": cfg.model, "steps": max(rows), "total_steps": plan["total_steps"],
        "train_chains": data["train_chains"], "eval_chains": data["eval_chains"], "first_loss": rows[min(rows)]["loss"],
        "last_loss": last["loss"], "best_eval_loss": min(evals) if evals else math.nan,
        "stopped_early": max(rows) < plan["total_steps"],
        "seconds": round(seconds, 1), "loss_plot": str(out / "loss.png"),
        "tensorboard": str(out / "tensorboard"),
        "nodes": [w["node_id"] for w in json.loads((out / WORKERS).read_text())],
    }
    run.write_summary(summary)  # last: marks the run done
    return summary
