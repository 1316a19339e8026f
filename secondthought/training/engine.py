"""What the SFT workers and the RL learners share: the DeepSpeed engine config, the lookup of the newest
complete checkpoint, the digests that make a resumed checkpoint the one that was saved, and fault injection for
tests. No Ray, no torch."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from secondthought.config import EngineConfig

STATE = "state.json"
"""Every checkpoint folder holds the loop's state as JSON; the RL driver writes it last."""


def engine_config(cfg: EngineConfig, micro_batch_size: int, grad_accum: int, lr: float, max_grad_norm: float = 1.0,
                  weight_decay: float = 0.0, offload_optimizer: bool = False, offload_params: bool = False) -> dict:
    """The DeepSpeed config of a training engine (SFT workers, RL learners)."""
    zero: dict = {"stage": cfg.zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.bf16()},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if offload_optimizer:  # the offloaded step needs DeepSpeed's own CPU Adam
        config["optimizer"] = {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay}}
    return config


def deepspeed_files_complete(folder: Path, world: int, optimizer_shards: bool = True) -> bool:
    """A DeepSpeed checkpoint (tag folder) holds the model states and, with ``optimizer_shards``, one
    optimizer shard per rank. Without ZeRO (stage 0) in fp32 there are no shards: the optimizer state is
    inside the model states file (see ``has_optimizer_shards``)."""
    if not folder.is_dir():
        return False
    shards = len(list(folder.glob("*optim_states.pt")))
    return (shards == world if optimizer_shards else True) and any(folder.glob("*model_states.pt"))


def has_optimizer_shards(cfg: EngineConfig) -> bool:
    """Whether DeepSpeed writes per-rank optimizer files: with ZeRO, or with its bf16 optimizer."""
    return cfg.zero_stage > 0 or cfg.bf16()


def newest_checkpoint(folder: Path, progress: str, complete: Callable[[Path], bool] = lambda _: True) -> Path | None:
    """The checkpoint under ``folder`` (a sub-folder with state.json) that got furthest, by the state's
    ``progress`` field (step, iteration), among those ``complete`` accepts; None if there is none.

    The disk is the record: Ray Train hands a restarted worker group the last checkpoint its controller
    registered, and one fully written just before a worker died may not be registered yet.
    """
    found = []
    for state in folder.glob(f"*/{STATE}"):
        if complete(state.parent):
            found.append((json.loads(state.read_text())[progress], str(state.parent)))
    return Path(max(found)[1]) if found else None


class CheckpointChanged(RuntimeError):
    """A checkpoint file is not the one that was saved: it is not loaded (DeepSpeed reads its optimizer states with
    torch.load(weights_only=False), which runs whatever code a crafted file holds)."""


def digests(folder: Path, under: str = "") -> dict[str, str]:
    """SHA-256 of every file below ``folder``/``under``, by its path relative to ``folder``."""
    found = {}
    for path in sorted((folder / under).rglob("*")):
        if path.is_file():
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
            found[path.relative_to(folder).as_posix()] = sha.hexdigest()
    return found


def verify(folder: Path, recorded: dict[str, str], under: str = "", ignore: tuple[str, ...] = ()) -> None:
    """Every file below ``folder``/``under`` (less those named in ``ignore``) is one ``recorded`` when the checkpoint
    was saved, unchanged, and none is missing; CheckpointChanged naming the first that is not."""
    if not recorded:
        raise CheckpointChanged(f"{folder} records no digests of its files (saved by an older version?): it is not "
                                "loaded; start the run again without --resume")
    now = {name: sha for name, sha in digests(folder, under).items() if name not in ignore}
    for name in sorted(set(now) | set(recorded)):
        if now.get(name) != recorded.get(name):
            what = "is new" if name not in recorded else "is gone" if name not in now else "changed"
            raise CheckpointChanged(f"{folder / name} {what} since the checkpoint was saved: it is not loaded "
                                    "(a checkpoint file can run code when read); start again without --resume, or "
                                    "restore the file")


def inject_fault(marker: str | Path) -> None:
    """Testing fault tolerance: exit abruptly, as from a crash or a lost node, once per run (the marker file
    records that it happened)."""
    if not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)
