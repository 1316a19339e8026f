"""Training metrics: a JSONL file, TensorBoard (or MLflow / W&B) and a progress line with an ETA."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict
from pathlib import Path

from secondthought import console
from secondthought.runs import METRICS


class Tracker:
    """Metrics to metrics.jsonl, TensorBoard (or MLflow / W&B) and a progress line, on rank 0 only."""

    def __init__(self, cfg, out: Path, rank: int, total_steps: int, first_step: int, unit: str = "step"):
        self.active = rank == 0
        self.total_steps, self.first_step, self.unit = total_steps, first_step, unit
        self.started = time.time()
        self.writer = None
        if not self.active:
            return
        self.metrics_file = open(out / METRICS, "a", encoding="utf-8")
        if cfg.tracking == "tensorboard":
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"))
        elif cfg.tracking == "mlflow":
            import mlflow

            self.writer = mlflow
        else:
            import wandb

            wandb.init(project="secondthought", config=asdict(cfg), resume="allow")
            self.writer = wandb

    def log(self, step: int, metrics: dict, show: bool) -> None:
        if not self.active:
            return
        self.metrics_file.write(json.dumps({self.unit: step, **metrics}) + "\n")
        self.metrics_file.flush()
        if hasattr(self.writer, "add_scalar"):
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)
        elif self.writer is not None and hasattr(self.writer, "log_metrics"):
            self.writer.log_metrics(metrics, step=step)
        elif self.writer is not None:
            self.writer.log(metrics, step=step)
        if show:
            elapsed = time.time() - self.started
            parts = [f"{self.unit} {step}/{self.total_steps}"] + [
                f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("epoch",)
            ]
            eta = elapsed / max(step - self.first_step, 1) * (self.total_steps - step)
            _write(" | ".join(parts) + f" | {elapsed:.0f}s elapsed, ~{eta:.0f}s left")

    def close(self) -> None:
        if self.active:
            self.metrics_file.close()
            if hasattr(self.writer, "close"):
                self.writer.close()


def _write(line: str) -> None:
    # console.say writes to sys.stdout, not print(): Ray Train also copies print() calls to its logs,
    # which doubled each line
    console.say(line)


class ProgressLine:
    """The project's progress line for long work outside a training loop (also inside Ray tasks, whose
    output reaches the console line by line, where a redrawn bar would not): done/total and an ETA,
    at most every ``every_s`` seconds, and once at the end of work that took longer than that."""

    def __init__(self, what: str, total: int, unit: str, enabled: bool = True, every_s: float = 10.0):
        self.what, self.total, self.unit, self.enabled, self.every_s = what, total, unit, enabled, every_s
        self.started = self.shown = time.time()
        self.done, self.extra = 0, {}

    def update(self, done: int, **extra: float) -> None:
        self.done, self.extra = done, extra
        if self.enabled and time.time() - self.shown >= self.every_s:
            self.show()

    def show(self) -> None:
        self.shown = time.time()
        elapsed = self.shown - self.started
        eta = elapsed / max(self.done, 1) * (self.total - self.done)
        parts = [f"{self.what} {self.done}/{self.total} {self.unit}"] + [f"{k} {v:.4g}" for k, v in self.extra.items()]
        _write(" | ".join(parts) + f" | {elapsed:.0f}s elapsed, ~{eta:.0f}s left")

    def close(self) -> None:
        if self.enabled and time.time() - self.started >= self.every_s:
            self.show()


@contextlib.contextmanager
def follow(metrics_file: Path, key: str, total: int, what: str, shown=("loss", "eval_loss"), every_s: float = 10.0):
    """While the console is quiet, the progress of a Ray worker's loop (whose own lines reach only the log)
    on the terminal: read from the metrics it appends to ``metrics_file``."""
    if not console.quiet():
        yield
        return
    line, stop = ProgressLine(what, total, f"{key}s", every_s=every_s), threading.Event()

    def loop() -> None:
        offset = 0
        while not stop.wait(1.0):
            if not metrics_file.is_file():
                continue
            with open(metrics_file, "rb") as f:
                f.seek(offset)
                text = f.read()
            whole = text[: text.rfind(b"\n") + 1]  # a line being written is read next time
            offset += len(whole)
            for row in map(json.loads, whole.decode().splitlines()):
                line.update(row[key], **{k: row[k] for k in shown if k in row})

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        line.close()


def read_metrics(metrics_file: Path, key: str) -> dict[int, dict]:
    """The logged metrics, one row per ``key`` value: a step redone after a restart replaces the first try."""
    return {row[key]: row for row in map(json.loads, metrics_file.read_text().splitlines())}


@contextlib.contextmanager
def figure(png: Path, rows: int = 1, cols: int = 1, **kwargs):
    """Axes of a new matplotlib figure (no display needed), saved to ``png`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, **kwargs)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(png, dpi=120)
    finally:
        plt.close(fig)


def label(ax, xlabel: str | None, ylabel: str) -> None:
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
