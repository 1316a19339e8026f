"""The fine-tuning loop each Ray Train worker runs (the driver is ``sft.driver``): set up a DeepSpeed engine, then
a flat loop.

get batch -> forward -> backward -> step (DeepSpeed accumulates, clips, steps the schedule)
-> log -> every K steps: evaluate, checkpoint, export the best model, early stopping.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import ray

from secondthought.config import SFTConfig
from secondthought.models.lm import export_hf
from secondthought.runs import FAULT_MARKER, WORKERS, write_json
from secondthought.tracking import Tracker
from secondthought.training.batching import IGNORE, Batch, Row, bucketed, collate, rows_of_rank
from secondthought.training.engine import (
    STATE,
    deepspeed_files_complete,
    digests,
    engine_config,
    has_optimizer_shards,
    inject_fault,
    newest_checkpoint,
    verify,
)
from secondthought.training.schedule import lr_factor

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
"""Dense bf16 peak of common accelerators, for the MFU estimate."""


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint."""

    epoch: int = 0
    batches_done: int = 0
    """Micro-batches done in the current epoch (the data position)."""
    step: int = 0
    best_eval: float = math.inf
    bad_evals: int = 0
    tokens_seen: int = 0
    stopped_early: bool = False
    evals: list = field(default_factory=list)


def _rows(iterator, tgt_id: int, direct: float = 0.0, seed: int = 0) -> Iterator[Row]:
    """Training rows, each with its chain of edits cut out (prompt -> <|tgt|> target) with probability ``direct``
    (1: every row, the "SFT on targets only" baseline). The draws come from ``seed`` in the data's order, so every
    rank (and a resumed run) cuts the same rows."""
    draw = random.Random(seed)
    for batch in iterator.iter_batches(batch_size=2048, batch_format="numpy"):
        for ids, prompt_len in zip(batch["input_ids"], batch["prompt_len"]):
            ids = np.asarray(ids, dtype=np.int64)
            if direct >= 1 or (direct > 0 and draw.random() < direct):
                ids = np.concatenate([ids[:prompt_len], ids[prompt_len + int(np.argmax(ids[prompt_len:] == tgt_id)):]])
            yield Row(ids, int(prompt_len))


def _to_device(batch: Batch, device) -> dict:
    import torch

    return {name: torch.from_numpy(getattr(batch, name)).to(device)
            for name in ("input_ids", "attention_mask", "labels")}


def _rng_state() -> dict:
    """The random generators' states as plain JSON (no pickle: a checkpoint is data, never code)."""
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}


def _set_rng_state(state: dict) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))


def _all_reduce(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _evaluate(engine, rows: list[Row], cfg: SFTConfig, pad_id: int, device) -> float:
    """Token-weighted mean loss over every rank's eval rows (same number of forwards on every rank)."""
    import torch

    engine.eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), cfg.micro_batch_size):
            batch = collate(rows[start : start + cfg.micro_batch_size], pad_id, cfg.mask_prompt)
            n = int((batch.labels[:, 1:] != IGNORE).sum())
            loss = engine(**_to_device(batch, device)).loss
            loss_sum += float(loss) * n
            tokens += n
    engine.train()
    loss_sum, tokens = _all_reduce([loss_sum, tokens], device)
    return loss_sum / max(tokens, 1)


def _export(engine, cfg: SFTConfig, base_dir: Path, dest: Path, rank: int) -> None:
    """The current weights as a Hugging Face folder (safetensors + tokenizer), written by rank 0."""
    state_dict = engine._zero3_consolidated_16bit_state_dict() if cfg.zero_stage == 3 else None
    if rank == 0:
        export_hf(engine.module, state_dict, base_dir, dest)


def _complete(checkpoint: Path, world: int, cfg: SFTConfig) -> bool:
    """Every rank wrote its RNG state and its DeepSpeed shard."""
    ranks_done = all((checkpoint / f"rng-{r}.json").is_file() for r in range(world))
    return ranks_done and deepspeed_files_complete(checkpoint / "engine", world, has_optimizer_shards(cfg))


def _checkpoint(engine, state: TrainState, metrics: dict, rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        engine.save_checkpoint(folder, tag="engine")
        if rank == 0:
            write_json(Path(folder, STATE), asdict(state))
        # this rank's engine files (each rank writes its own into its own folder; Ray Train merges them)
        write_json(Path(folder, f"rng-{rank}.json"), {"state": _rng_state(), "sha256": digests(Path(folder), "engine")},
                   indent=None)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _record_nodes(path: Path, rank: int, world: int) -> None:
    """Rank 0 writes the Ray node each rank runs on (gathered over the process group)."""
    import torch.distributed as dist

    mine = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        path.write_text(json.dumps(everyone, indent=1))


@dataclass
class _Worker:
    """What one worker's loop works with, set up once."""

    cfg: SFTConfig
    plan: dict
    """What the driver planned for every worker: folders, step counts, token ids (``sft.driver``)."""
    rank: int
    world: int
    device: object
    engine: object
    scheduler: object
    state: TrainState
    eval_rows: list[Row]
    train_shard: object
    tracker: Tracker
    n_params: int
    peak_tflops: float | None

    @property
    def out(self) -> Path:
        return Path(self.plan["out"])

    @property
    def direct(self) -> float:
        """The share of training rows whose chain is cut out (1: the targets-only baseline)."""
        return self.cfg.direct_targets if self.cfg.chains else 1.0


@dataclass
class _Window:
    """The micro-batches since the last optimizer step, added up for its log line."""

    started: float = field(default_factory=time.time)
    loss: float = 0.0
    micro: int = 0
    tokens: int = 0
    padded: int = 0

    def add(self, loss: float, batch: Batch) -> None:
        self.loss += loss
        self.micro += 1
        self.tokens += batch.tokens
        self.padded += batch.attention_mask.size


def train_loop_per_worker(config: dict) -> None:
    """What each Ray Train worker runs: set up, train, clean up."""
    worker = _setup(SFTConfig(**config["sft"]), config["plan"])
    _train(worker)
    worker.tracker.close()


def _setup(cfg: SFTConfig, plan: dict) -> _Worker:
    """Seeds, the DeepSpeed engine over the base model, the state of a run to continue, the data."""
    import ray.train
    import ray.train.torch
    import torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(min(plan["torch_threads"], os.cpu_count() or 1))
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)
    engine, scheduler, n_params = _engine(cfg, plan, device)
    _record_nodes(Path(plan["out"]) / WORKERS, rank, world)
    state = _resume(engine, plan, cfg, rank, world)
    # the eval loss is on chains (targets only for the baseline), whatever share of training rows is cut
    eval_rows = list(islice(rows_of_rank(_rows(ray.train.get_dataset_shard("eval"), plan["tgt_id"],
                                               0.0 if cfg.chains else 1.0), rank, world),
                            plan["eval_rows_per_rank"]))
    train_shard = ray.train.get_dataset_shard("train")
    tracker = Tracker(cfg, Path(plan["out"]), rank, plan["total_steps"], state.step)
    peak = cfg.peak_tflops or next((v for k, v in PEAK_TFLOPS.items()
                                    if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None)
    return _Worker(cfg, plan, rank, world, device, engine, scheduler, state, eval_rows, train_shard, tracker,
                   n_params, peak)


def _engine(cfg: SFTConfig, plan: dict, device) -> tuple[object, object, int]:
    """The DeepSpeed engine, its learning-rate schedule and the model's parameter count."""
    import deepspeed
    import torch

    from secondthought.models.lm import load_model

    model = load_model(Path(plan["base_dir"]), dtype=torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = None
    if not cfg.offload_optimizer:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      fused=device.type == "cuda")
    total, warmup = plan["total_steps"], plan["warmup_steps"]

    def schedule(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.min_lr_ratio))

    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                                   model_parameters=model.parameters(),
                                                   config=engine_config(cfg, cfg.micro_batch_size, cfg.grad_accum,
                                                                        cfg.lr, cfg.max_grad_norm, cfg.weight_decay,
                                                                        cfg.offload_optimizer, cfg.offload_params))
    return engine, scheduler, n_params


def _resume(engine, plan: dict, cfg: SFTConfig, rank: int, world: int) -> TrainState:
    """The state of the newest complete checkpoint, loaded into the engine (a new state where there is none)."""
    import ray.train

    checkpoint = newest_checkpoint(Path(plan["checkpoints"]), "step", lambda c: _complete(c, world, cfg))
    if not checkpoint:
        return TrainState()
    with ray.train.Checkpoint.from_directory(str(checkpoint)).as_directory() as folder:
        recorded = {name: sha for r in range(world) if Path(folder, f"rng-{r}.json").is_file()
                    for name, sha in json.loads(Path(folder, f"rng-{r}.json").read_text()).get("sha256", {}).items()}
        verify(Path(folder), recorded, "engine")  # before DeepSpeed's torch.load reads any of them
        engine.load_checkpoint(folder, tag="engine")
        state = TrainState(**json.loads(Path(folder, STATE).read_text()))
        rng_file = Path(folder, f"rng-{rank}.json")
        if rng_file.is_file():
            _set_rng_state(json.loads(rng_file.read_text())["state"])
    if rank == 0:
        print(f"resumed at step {state.step} (epoch {state.epoch}, micro-batch {state.batches_done})", flush=True)
    return state


def _train(w: _Worker) -> None:
    """The loop: 1. forward, backward, step; 2. at each optimizer step, its metrics; 3. every K steps evaluate,
    keep the best model and stop early; 4. checkpoint."""
    cfg, plan, state = w.cfg, w.plan, w.state
    total = plan["total_steps"]
    window = _Window()
    stop = state.step >= total or state.stopped_early  # a restart after an early stop only finishes the run
    while not stop and state.epoch < cfg.epochs:
        batches = bucketed(rows_of_rank(_rows(w.train_shard, plan["tgt_id"], w.direct, seed=cfg.seed * 1009 + state.epoch),
                                        w.rank, w.world), cfg.micro_batch_size,
                           cfg.bucket_window, cfg.seed, state.epoch, cfg.grad_accum)
        for index, rows in enumerate(islice(batches, plan["micro_batches_per_epoch"])):
            if index < state.batches_done:
                continue  # done before the restart: same data, same order
            batch = collate(rows, plan["pad_id"], cfg.mask_prompt)                       # 1
            loss = w.engine(**_to_device(batch, w.device)).loss
            w.engine.backward(loss)
            w.engine.step()  # DeepSpeed accumulates, clips and steps the schedule
            state.batches_done += 1
            window.add(loss.detach().item(), batch)
            if state.batches_done % cfg.grad_accum:
                continue
            state.step += 1                                                                 # 2
            if cfg.fault_injection_step == state.step and w.rank == min(1, w.world - 1):
                inject_fault(w.out / FAULT_MARKER)
            metrics = _step_metrics(w, window)
            last = state.step >= total
            evaluate = state.step % cfg.eval_every == 0 or last
            if evaluate:                                                                    # 3
                _evaluate_and_keep_best(w, metrics)
                stop = last or state.stopped_early
            w.tracker.log(state.step, metrics, show=evaluate or state.step % cfg.log_every == 0)
            if evaluate:                                                                    # 4
                if stop and state.batches_done == plan["micro_batches_per_epoch"]:
                    state.epoch, state.batches_done = state.epoch + 1, 0
                _checkpoint(w.engine, state, {**metrics, "step": state.step}, w.rank)
            window = _Window()
            if stop:
                break
        else:
            state.epoch += 1
            state.batches_done = 0


def _step_metrics(w: _Worker, window: _Window) -> dict:
    """The optimizer step's loss, learning rate, throughput and padding over every worker (and MFU on a GPU)."""
    loss_sum, micro, tokens, padded = _all_reduce([window.loss, window.micro, window.tokens, window.padded],
                                                  w.device)
    seconds = time.time() - window.started
    w.state.tokens_seen += int(tokens)
    metrics = {"loss": loss_sum / micro, "lr": w.scheduler.get_last_lr()[0], "epoch": w.state.epoch,
               "tokens_per_s": tokens / seconds, "padding": 1 - tokens / padded}
    if w.peak_tflops:
        metrics["mfu"] = 6 * w.n_params * tokens / seconds / (w.peak_tflops * 1e12 * w.world)
    return metrics


def _evaluate_and_keep_best(w: _Worker, metrics: dict) -> None:
    """Eval loss into ``metrics``; a better one exports the model, a worse one counts towards early stopping."""
    state = w.state
    metrics["eval_loss"] = _evaluate(w.engine, w.eval_rows, w.cfg, w.plan["pad_id"], w.device)
    state.evals.append([state.step, metrics["eval_loss"]])
    if metrics["eval_loss"] < state.best_eval:
        state.best_eval, state.bad_evals = metrics["eval_loss"], 0
        _export(w.engine, w.cfg, Path(w.plan["base_dir"]), Path(w.plan["best_dir"]), w.rank)
    else:
        state.bad_evals += 1
    state.stopped_early = bool(w.cfg.patience) and state.bad_evals >= w.cfg.patience
