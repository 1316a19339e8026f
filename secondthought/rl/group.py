"""A group of actors of one role (OpenRLHF's RayActorGroup): created together in a placement group,
called together, results gathered; work may be sliced so that each actor receives only its part."""

from __future__ import annotations

from typing import Callable, Sequence

import ray
from ray.exceptions import RayActorError

from secondthought import console
from secondthought.rl.experience import shards
from secondthought.rl.placement import Placement


class ActorGroup:
    """N actors of one role."""

    def __init__(self, role: str, actors: list):
        self.role, self.actors = role, actors

    @classmethod
    def spawn(cls, actor_class, role: str, n: int, placement: Placement, args: Callable[[int, int], tuple],
              **options) -> ActorGroup:
        """``n`` actors of ``actor_class``, actor k built with ``args(k, torch_threads)`` where ``placement`` puts it."""
        actors = []
        for k in range(n):
            placed, threads = placement.options(role, k)
            actors.append(actor_class.options(**placed, **options).remote(*args(k, threads)))
        return cls(role, actors)

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, k: int):
        return self.actors[k]

    def call(self, method: str, *args) -> list:
        """Object refs of ``method(*args)`` on every actor."""
        return [getattr(actor, method).remote(*args) for actor in self.actors]

    def call_sliced(self, method: str, items: Sequence, *args) -> tuple[list[list], list]:
        """Actor k gets the k-th contiguous slice of ``items`` as its first argument; returns the slices and
        the object refs."""
        parts = shards(items, len(self.actors))
        return parts, [getattr(actor, method).remote(part, *args) for actor, part in zip(self.actors, parts)]

    def run(self, method: str, *args) -> list:
        """``method(*args)`` on every actor; their results in actor order."""
        return ray.get(self.call(method, *args))

    def run_sliced(self, method: str, items: Sequence, *args) -> list:
        return ray.get(self.call_sliced(method, items, *args)[1])

    def nodes(self) -> list[str]:
        """The Ray node id each actor runs on, in actor order."""
        return ray.get([actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
                        for actor in self.actors])

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def retrying(name: str, submit: Callable[[int], object], max_restarts: int):
    """``ray.get(submit(attempt))``, submitted again after the actor died and Ray restarted it (an actor
    that keeps no state of its own beyond what ``submit`` can send again)."""
    for attempt in range(max_restarts + 1):
        try:
            return ray.get(submit(attempt))
        except RayActorError as e:
            if attempt == max_restarts:
                raise
            console.say(f"[rl] {name} died ({type(e).__name__}); restarted, redoing its work")
