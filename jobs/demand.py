"""What a stage asks a cluster for, and whether a set of nodes can ever give it.

A job whose placement group asks for GPUs that no node has waits forever: `secondthought submit` checks
the asks against the cluster's nodes before it sends the job, and the tests check the scale configs in
jobs/ against the nodes the KubeRay manifests in cluster/ provide. Plain functions over dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from secondthought.config import RLConfig, SFTConfig


@dataclass(frozen=True)
class Ask:
    """Bundles one part of a stage needs at the same time, and how they may spread over nodes."""

    what: str
    bundles: tuple[dict, ...]
    strategy: str = "PACK"

    def describe(self) -> str:
        shown = ", ".join(f"{k}: {v:g}" for k, v in self.bundles[0].items()) if self.bundles else ""
        return f"{self.what}: {len(self.bundles)} x {{{shown}}} ({self.strategy})"


def sft_ask(cfg: SFTConfig, cluster_cpus: float, what: str = "sft") -> Ask:
    """The Ray Train workers: a bundle each (the CPUs the stage would give them on this cluster)."""
    from secondthought.sft.driver import cpus_per_worker

    bundle = {"CPU": cfg.cpus_per_worker or cpus_per_worker(cfg.num_workers, max(cluster_cpus, 2)),
              "GPU": 1.0 if cfg.use_gpu else 0.0}
    return Ask(what, tuple(_nonzero(bundle) for _ in range(cfg.num_workers)), cfg.placement_strategy)


def rl_ask(cfg: RLConfig, cluster_cpus: float) -> Ask:
    """The RL actors' placement group, as the rl stage plans it."""
    from secondthought.rl.placement import group_cpus, plan

    bundles, _ = plan(cfg, group_cpus(cfg, max(cluster_cpus, 1)))
    return Ask("rl", tuple(bundles), cfg.placement_strategy)


def asks(sections: dict, cluster_cpus: float) -> list[Ask]:
    """Everything a command with these config sections asks for, part by part (the parts of the pipeline run one
    after another, so each must fit on its own): its fine-tuning workers, its RL actors, a worker for few-shot
    adaptation, and a CPU for its data and evaluation tasks."""
    parts = [sft_ask(sections["sft"], cluster_cpus)] if "sft" in sections else []
    parts += [rl_ask(sections["rl"], cluster_cpus)] if "rl" in sections else []
    parts += [Ask("transfer fine-tuning", ({"CPU": 1.0},))] if "transfer" in sections else []
    if not parts or "data" in sections or "eval" in sections:
        parts.insert(0, Ask("data and evaluation tasks", ({"CPU": 1.0},)))
    return parts


def unmet(ask: Ask, nodes: list[dict]) -> str | None:
    """None when the bundles of ``ask`` can be placed on ``nodes`` (each a dict of total resources), else
    what is missing. First fit by decreasing size, one bundle per node for STRICT_SPREAD."""
    free = [dict(n) for n in nodes]
    used: set[int] = set()
    for bundle in sorted(ask.bundles, key=lambda b: (b.get("GPU", 0), b.get("CPU", 0)), reverse=True):
        spot = next((i for i, node in enumerate(free)
                     if (ask.strategy != "STRICT_SPREAD" or i not in used)
                     and all(node.get(k, 0) + 1e-9 >= v for k, v in bundle.items())), None)
        if spot is None:
            return (f"{ask.describe()} cannot be placed on the cluster's {len(nodes)} node(s) "
                    f"[{'; '.join(_shown(n) for n in nodes)}]")
        used.add(spot)
        for k, v in bundle.items():
            free[spot][k] -= v
    return None


def _shown(node: dict) -> str:
    keep = {k: v for k, v in node.items() if k in ("CPU", "GPU") or not (k.startswith("node:") or "memory" in k)}
    return ", ".join(f"{k}: {v:g}" for k, v in sorted(keep.items())) or "no CPU"


def _nonzero(bundle: dict) -> dict:
    return {k: v for k, v in bundle.items() if v}
