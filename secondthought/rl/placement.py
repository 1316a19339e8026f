"""Where the RL actors run: one placement group, a bundle per device, each role's share of a bundle."""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from secondthought.config import RLConfig

ROLES = ("rollout", "learner", "reference", "discriminator")


def plan(cfg: RLConfig, cpus: float) -> tuple[list[dict], dict[str, list[tuple[int, float]]]]:
    """Placement-group bundles and, for each role, (bundle index, share of the bundle) per actor.

    Colocated: bundle i holds rollout worker i and learner i (and bundle 0 the reference and the
    discriminator), sharing its CPUs/GPU. Otherwise every actor has a bundle of its own.
    """
    gpu = 1.0 if cfg.use_gpu else 0.0
    roles = dict(zip(ROLES, (cfg.rollout_workers, cfg.learner_workers, 1, 1)))
    if not cfg.colocate:
        bundles, where = [], {}
        for role, n in roles.items():
            where[role] = [(len(bundles) + k, 1.0) for k in range(n)]
            bundles += [{"CPU": 1.0, "GPU": gpu} for _ in range(n)]
        return [{k: v for k, v in b.items() if v} for b in bundles], where
    n = max(cfg.rollout_workers, cfg.learner_workers)
    members: list[list[str]] = [[] for _ in range(n)]
    for role, count in roles.items():
        for k in range(count):
            members[k].append(role)
    where = {role: [] for role in roles}
    for index, slot in enumerate(members):
        for role in slot:
            where[role].append((index, 1.0 / len(slot)))
    bundle = {"CPU": cpus / n, "GPU": gpu}
    return [{k: v for k, v in bundle.items() if v} for _ in range(n)], where


def group_cpus(cfg: RLConfig, cluster_cpus: float) -> float:
    """The CPUs the colocated group takes on a cluster with ``cluster_cpus``: all of them, at most 8 a bundle."""
    return min(cluster_cpus, 8 * max(cfg.rollout_workers, cfg.learner_workers))


class Placement:
    """The run's placement group, created and ready; ``options`` places one actor of a role in it."""

    def __init__(self, cfg: RLConfig, timeout_s: float = 600):
        self.cfg = cfg
        self.cpus = group_cpus(cfg, ray.cluster_resources().get("CPU", 1))
        self.bundles, self.where = plan(cfg, self.cpus)
        self.group = placement_group(self.bundles, strategy=cfg.placement_strategy)
        ray.get(self.group.ready(), timeout=timeout_s)

    def options(self, role: str, k: int) -> tuple[dict, int]:
        """Ray options of actor ``k`` of ``role``, and its torch threads on a CPU: the rollout workers generate
        side by side, one bundle's CPUs each; the other roles work while the rollout workers wait, so
        colocated they may use every CPU of the group."""
        index, share = self.where[role][k]
        bundle = self.bundles[index]
        threads = bundle.get("CPU", 1) if role == "rollout" or not self.cfg.colocate else self.cpus
        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)
        return ({"num_cpus": bundle.get("CPU", 0) * share, "num_gpus": bundle.get("GPU", 0) * share,
                 "scheduling_strategy": strategy}, max(1, int(threads)))

    def remove(self) -> None:
        remove_placement_group(self.group)
