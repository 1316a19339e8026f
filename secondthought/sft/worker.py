"""The fine-tuning loop each Ray Train worker runs (the driver is ``sft.py``): a DeepSpeed engine and a
flat loop.

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
from ray.train.backend import Backend
from ray.train.torch import TorchConfig

from secondthought.config import SFTConfig
from secondthought.models.lm import export_hf
from secondthought.runs import FAULT_MARKER, WORKERS
from secondthought.tracking import Tracker
from secondthought.training import rendezvous
from secondthought.training.batching import (
    IGNORE,
    Batch,
    Row,
    bucketed,
    collate,
    lr_factor,
    rows_of_rank,
)
from secondthought.training.engine import (
    STATE,
    deepspeed_files_complete,
    engine_config,
    has_optimizer_shards,
    inject_fault,
    newest_checkpoint,
)

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


def _rows(iterator, cut_chain_at: int | None = None) -> Iterator[Row]:
    """Training rows; with ``cut_chain_at`` (the id of <|tgt|>) the chain of edits is cut out:
    prompt -> <|tgt|> target, the "SFT on targets only" baseline."""
    for batch in iterator.iter_batches(batch_size=2048, batch_format="numpy"):
        for ids, prompt_len in zip(batch["input_ids"], batch["prompt_len"]):
            ids = np.asarray(ids, dtype=np.int64)
            if cut_chain_at is not None:
                ids = np.concatenate([ids[:prompt_len], ids[prompt_len + int(np.argmax(ids[prompt_len:] == cut_chain_at)):]])
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
            Path(folder, STATE).write_text(json.dumps(asdict(state)))
        Path(folder, f"rng-{rank}.json").write_text(json.dumps({"state": _rng_state()}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class _NodeBoundBackend(Backend):
    """Ray Train's torch backend, but the process group meets at a store on rank 0's own address
    (rendezvous.py) instead of torch's ``env://`` store, which listens on every address."""

    share_cuda_visible_devices = True

    def on_start(self, worker_group, backend_config) -> None:
        address = worker_group.execute_single(0, _serve)
        ray.get([worker_group.execute_single_async(rank, _join, address, rank, len(worker_group),
                                                   backend_config.timeout_s)
                 for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config) -> None:
        worker_group.execute(rendezvous.leave)


def _serve() -> tuple[str, int]:
    return rendezvous.serve(ray.util.get_node_ip_address())


def _join(address: tuple[str, int], rank: int, world: int, timeout_s: float) -> None:
    import ray.train.torch

    context = ray.train.get_context()
    for name, value in (("LOCAL_RANK", context.get_local_rank()), ("LOCAL_WORLD_SIZE", context.get_local_world_size()),
                        ("NODE_RANK", context.get_node_rank()), ("RANK", rank), ("WORLD_SIZE", world)):
        os.environ[name] = str(value)
    rendezvous.join(address, rank, world, ray.train.torch.get_device().type, timeout_s)


@dataclass
class NodeBoundTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return _NodeBoundBackend


def _record_nodes(path: Path, rank: int, world: int) -> None:
    """Rank 0 writes the Ray node each rank runs on (gathered over the process group)."""
    import torch.distributed as dist

    mine = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        path.write_text(json.dumps(everyone, indent=1))


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch

    from secondthought.models.lm import load_model

    cfg = SFTConfig(**config["sft"])
    plan = config["plan"]
    out, base_dir = Path(plan["out"]), Path(plan["base_dir"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(min(plan["torch_threads"], os.cpu_count() or 1))
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)

    model = load_model(base_dir, dtype=torch.float32)
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
    _record_nodes(out / WORKERS, rank, world)
    state = TrainState()
    checkpoint = newest_checkpoint(Path(plan["checkpoints"]), "step", lambda c: _complete(c, world, cfg))
    if checkpoint:
        with ray.train.Checkpoint.from_directory(str(checkpoint)).as_directory() as folder:
            engine.load_checkpoint(folder, tag="engine")
            state = TrainState(**json.loads(Path(folder, STATE).read_text()))
            rng_file = Path(folder, f"rng-{rank}.json")
            if rng_file.is_file():
                _set_rng_state(json.loads(rng_file.read_text())["state"])
        if rank == 0:
            print(f"resumed at step {state.step} (epoch {state.epoch}, micro-batch {state.batches_done})", flush=True)

    pad_id = plan["pad_id"]
    cut = None if cfg.chains else plan["tgt_id"]
    eval_rows = list(islice(rows_of_rank(_rows(ray.train.get_dataset_shard("eval"), cut), rank, world),
                            plan["eval_rows_per_rank"]))
    train_shard = ray.train.get_dataset_shard("train")
    tracker = Tracker(cfg, out, rank, total, state.step)
    peak = cfg.peak_tflops or next((v for k, v in PEAK_TFLOPS.items()
                                    if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None)
    window_started, window_tokens, window_padded, window_loss, window_micro = time.time(), 0, 0, 0.0, 0
    stop = state.step >= total or state.stopped_early  # a restart after an early stop only finishes the run
    while not stop and state.epoch < cfg.epochs:
        batches = bucketed(rows_of_rank(_rows(train_shard, cut), rank, world), cfg.micro_batch_size,
                           cfg.bucket_window, cfg.seed, state.epoch, cfg.grad_accum)
        for index, rows in enumerate(islice(batches, plan["micro_batches_per_epoch"])):
            if index < state.batches_done:
                continue  # done before the restart: same data, same order
            batch = collate(rows, pad_id, cfg.mask_prompt)
            loss = engine(**_to_device(batch, device)).loss
            engine.backward(loss)
            engine.step()
            state.batches_done += 1
            window_loss += loss.detach().item()
            window_micro += 1
            window_tokens += batch.tokens
            window_padded += batch.attention_mask.size
            if state.batches_done % cfg.grad_accum:
                continue
            state.step += 1
            if cfg.fault_injection_step == state.step and rank == min(1, world - 1):
                inject_fault(out / FAULT_MARKER)
            loss_sum, micro, tokens, padded = _all_reduce([window_loss, window_micro, window_tokens, window_padded],
                                                         device)
            seconds = time.time() - window_started
            state.tokens_seen += int(tokens)
            metrics = {"loss": loss_sum / micro, "lr": scheduler.get_last_lr()[0], "epoch": state.epoch,
                       "tokens_per_s": tokens / seconds, "padding": 1 - tokens / padded}
            if peak:
                metrics["mfu"] = 6 * n_params * tokens / seconds / (peak * 1e12 * world)
            last = state.step >= total
            evaluate = state.step % cfg.eval_every == 0 or last
            if evaluate:
                metrics["eval_loss"] = _evaluate(engine, eval_rows, cfg, pad_id, device)
                state.evals.append([state.step, metrics["eval_loss"]])
                if metrics["eval_loss"] < state.best_eval:
                    state.best_eval, state.bad_evals = metrics["eval_loss"], 0
                    _export(engine, cfg, base_dir, Path(plan["best_dir"]), rank)
                else:
                    state.bad_evals += 1
                state.stopped_early = bool(cfg.patience) and state.bad_evals >= cfg.patience
                stop = last or state.stopped_early
            tracker.log(state.step, metrics, show=evaluate or state.step % cfg.log_every == 0)
            if evaluate:
                if stop and state.batches_done == plan["micro_batches_per_epoch"]:
                    state.epoch, state.batches_done = state.epoch + 1, 0
                _checkpoint(engine, state, {**metrics, "step": state.step}, rank)
            window_started, window_tokens, window_padded, window_loss, window_micro = time.time(), 0, 0, 0.0, 0
            if stop:
                break
        else:
            state.epoch += 1
            state.batches_done = 0
    tracker.close()
