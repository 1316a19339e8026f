"""Starting and stopping Ray for a stage: a local Ray on loopback, or a running cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator

from secondthought.config import RayConfig

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
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Connect to ``cfg.address`` or start a local Ray (listening on 127.0.0.1 only); shut down what we started."""
    if cfg.address is None:
        loopback_only()
    import ray

    if ray.is_initialized():
        yield
        return
    local_only = {}
    if cfg.address is None:
        # The dashboard serves the state API that Ray Train polls; on loopback like the rest.
        local_only = {"num_cpus": cfg.num_cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1"}
    ray.init(address=cfg.address, logging_level=logging.WARNING, log_to_driver=True, **local_only)
    try:
        yield
    finally:
        ray.shutdown()
