"""Starting and stopping Ray for a stage: a local Ray on loopback, or a running cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import uuid
import warnings
from pathlib import Path
from typing import Iterator

from secondthought.config import ConfigError, RayConfig

_LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Make a local Ray listen on 127.0.0.1 only. Ray reads this variable when it is first
    imported, so it must be set before that: the CLI calls this before anything imports Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and not ray.is_initialized() and os.environ.get(_LOOPBACK_VAR) != "0":
        warnings.warn(f"ray was imported before {_LOOPBACK_VAR}=0 was set: the local Ray about to start will "
                      "listen on every address, not only 127.0.0.1", stacklevel=3)
    os.environ.setdefault(_LOOPBACK_VAR, "0")


@contextlib.contextmanager
def ray_session(cfg: RayConfig, shared: str | Path | None = None) -> Iterator[None]:
    """Connect to ``cfg.address`` or start a local Ray (listening on 127.0.0.1 only); shut down what we started.

    ``shared``: the run directory. On a cluster of more than one node every node must see it (the workers
    write checkpoints and metrics there): checked before any work starts."""
    local = cfg.address in (None, "local")
    if local:
        loopback_only()
    import ray

    if ray.is_initialized():
        yield
        return
    options = {}
    if local:
        # "local" always starts a new Ray (a bare ray.init() joins whatever cluster was last started here).
        # The dashboard serves the state API that Ray Train polls; on loopback like the rest.
        options = {"address": "local", "num_cpus": cfg.num_cpus, "include_dashboard": True,
                   "dashboard_host": "127.0.0.1"}
    ray.init(**({"address": cfg.address} | options), logging_level=logging.WARNING, log_to_driver=True)
    # Ray's core worker catches SIGTERM and aborts the driver, skipping the shutdown below: take it back
    previous = interrupt_on_sigterm()
    try:
        if shared is not None and not local:
            check_shared(Path(shared))
        yield
    finally:
        shutdown(started_here=local)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def check_shared(folder: Path, timeout_s: float = 120) -> None:
    """Every alive node of the cluster reads a token the driver writes into ``folder``; a ConfigError names
    the nodes that cannot (the folder is on this node's own disk, not on storage the cluster shares)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = folder / f".shared-check-{token}"
    probe.write_text(token)
    read = ray.remote(num_cpus=0, max_retries=0)(_read_probe)
    try:
        refs = [read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe)) for n in nodes]
        seen = ray.get(refs, timeout=timeout_s)
    finally:
        probe.unlink(missing_ok=True)
    blind = [f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n, text in zip(nodes, seen, strict=True) if text != token]
    if blind:
        raise ConfigError(f"the run directory {folder} is not visible from {len(blind)} of the cluster's "
                          f"{len(nodes)} nodes: {', '.join(blind)}. On a cluster of several nodes it must be on "
                          "storage every node mounts at the same path (NFS, a shared volume)")


def _read_probe(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm():
    """Make SIGTERM (a scheduler's stop, ``kill``) raise KeyboardInterrupt like Ctrl-C, so that cleanup runs.
    Returns the handler it replaced (None off the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def shutdown(started_here: bool) -> None:
    """``ray.shutdown()``, then end every process of the local Ray we started that outlives it.

    ray.shutdown() kills the head's own processes, but a worker busy in native code can miss its
    raylet's death and live on, re-parented to init (a Ray Train controller did, for an hour).
    Only our own descendants are ended, by PID: never another Ray on the machine."""
    import psutil
    import ray

    try:
        ours = psutil.Process().children(recursive=True) if started_here else []
    except psutil.Error:
        ours = []
    ray.shutdown()
    end_processes(ours)


def end_processes(procs: list, grace: float = 5.0) -> list[str]:
    """SIGTERM, then after ``grace`` seconds SIGKILL, to those of ``procs`` still running; the titles of
    those it had to end (a warning names them: they are what ray.shutdown() leaves behind)."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace)
    ended = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            ended.append(" ".join(p.cmdline()).strip()[:80] or p.name())
            p.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(still, timeout=grace)
    if ended:
        logging.getLogger(__name__).warning("ended %d process(es) that outlived ray.shutdown(): %s", len(ended),
                                            "; ".join(ended))
    return ended
