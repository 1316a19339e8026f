"""Ray Train's torch backend for the fine-tuning workers, but the process group meets at a store on rank 0's own
address (``training.rendezvous``) instead of torch's ``env://`` store, which listens on every address."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.train.backend import Backend
from ray.train.torch import TorchConfig

from secondthought.training import rendezvous


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
