"""Starting and stopping Ray for a stage: a local Ray on loopback, or a running cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from secondthought.config import RayConfig


@contextlib.contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Connect to ``cfg.address`` or start a local Ray (listening on 127.0.0.1 only); shut down what we started."""
    import ray

    if ray.is_initialized():
        yield
        return
    local_only = {}
    if cfg.address is None:
        # A local Ray is for this machine alone: keep its ports on loopback. The dashboard serves
        # the state API that Ray Train polls.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        local_only = {"num_cpus": cfg.num_cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1"}
    ray.init(address=cfg.address, logging_level=logging.WARNING, log_to_driver=True, **local_only)
    try:
        yield
    finally:
        ray.shutdown()
