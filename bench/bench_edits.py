"""compute_edits throughput against a plain-Python DP, on real Moral Stories pairs and on 200-word pairs.

    python -m bench.bench_edits

Prints pairs/s for each cost set and the ratio to the plain DP measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import random
import time

from bench.synthetic import real_stories
from secondthought.chains.edits import compute_edits, split_units

COST_SETS = [(1, 1, 1), (1, 1, 2), (1, 1, 1.5)]


def plain_dp(source: str, target: str, costs) -> list[tuple[str, int, int]]:
    """The textbook weighted Levenshtein DP with a backtrace, in plain Python, over the same units."""
    a, b = split_units(source), split_units(target)
    ins, dele, rep = costs
    n, m = len(a), len(b)
    dist = [[0.0] * (m + 1) for _ in range(n + 1)]
    for j in range(m + 1):
        dist[0][j] = j * ins
    for i in range(1, n + 1):
        dist[i][0] = i * dele
        for j in range(1, m + 1):
            dist[i][j] = min(dist[i - 1][j] + dele, dist[i][j - 1] + ins,
                             dist[i - 1][j - 1] + (0 if a[i - 1] == b[j - 1] else rep))
    ops, i, j = [], n, m
    while i or j:
        if i and j and dist[i][j] == dist[i - 1][j - 1] + (0 if a[i - 1] == b[j - 1] else rep):
            if a[i - 1] != b[j - 1]:
                ops.append(("replace", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and dist[i][j] == dist[i - 1][j] + dele:
            ops.append(("delete", i - 1, j))
            i -= 1
        else:
            ops.append(("insert", i, j - 1))
            j -= 1
    return ops[::-1]


def long_pairs(n: int, words: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    vocabulary = sorted({w for s in real_stories() for w in s["moral_action"].split()})
    pairs = []
    for _ in range(n):
        source = [rng.choice(vocabulary) for _ in range(words)]
        target = list(source)
        for _ in range(words // 5):
            k = rng.randrange(len(target))
            roll = rng.random()
            if roll < 0.4:
                target[k] = rng.choice(vocabulary)
            elif roll < 0.7:
                target.insert(k, rng.choice(vocabulary))
            elif len(target) > 1:
                del target[k]
        pairs.append((" ".join(source), " ".join(target)))
    return pairs


def rate(fn, pairs, costs, min_seconds: float = 1.0) -> float:
    done, started = 0, time.perf_counter()
    while True:
        for source, target in pairs:
            fn(source, target, costs)
        done += len(pairs)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--long-pairs", type=int, default=200, help="number of 200-word pairs")
    args = parser.parse_args()
    stories = real_stories(("train.jsonl", "dev.jsonl", "train_norm_actions.jsonl"))
    real = [(s["immoral_action"], s["moral_action"]) for s in stories]
    long = long_pairs(args.long_pairs, 200)
    compute_edits("warm up", "the compiled DP", (1, 1, 1.5))
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'pairs':<22}{'costs':<14}{'compute_edits/s':>16}{'plain DP/s':>12}{'ratio':>8}")
    for name, pairs, dp_pairs in [(f"Moral Stories ({len(real)})", real, real[:1000]),
                                  (f"200-word ({len(long)})", long, long[:20])]:
        for costs in COST_SETS:
            ours = rate(compute_edits, pairs, costs)
            plain = rate(plain_dp, dp_pairs, costs)
            print(f"{name:<22}{str(costs):<14}{ours:>16,.0f}{plain:>12,.0f}{ours / plain:>7.1f}x")


if __name__ == "__main__":
    main()
