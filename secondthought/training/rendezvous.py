"""How the ranks of a process group (SFT workers, RL learners) meet: rank 0 serves torch's rendezvous store
from a socket bound to its node's own address (127.0.0.1 on a local Ray), the other ranks connect to it.
torch's own ``env://`` and ``tcp://`` rendezvous would bind the store to every address.

Each function runs in the rank's own process; the socket and the store live in this module's globals for
as long as the process group does.
"""

from __future__ import annotations

import socket
from datetime import timedelta

_served: dict = {}  # rank 0's listening socket, then its store


def serve(ip: str) -> tuple[str, int]:
    """Rank 0: a listening socket on ``ip`` (this node's address), for :func:`join`'s store."""
    listener = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    listener.bind((ip, 0))
    listener.listen()
    _served["listener"] = listener
    return ip, listener.getsockname()[1]


def join(address: tuple[str, int], rank: int, world: int, device_type: str, timeout_s: float = 1800) -> str:
    """Join the process group whose store rank 0 serves at ``address``; returns its backend (nccl for CUDA
    devices, else gloo)."""
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    host, port = address
    listener = _served.pop("listener", None) if rank == 0 else None
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world, is_master=listener is not None, timeout=timeout,
                          master_listen_fd=listener.fileno() if listener is not None else None)
    if listener is not None:
        _served["store"], _served["socket"] = store, listener  # the store serves from the socket: keep both
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return backend


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _served.clear()
