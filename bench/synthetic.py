"""Synthetic Moral Stories rows for benchmarks: real stories with randomly varied actions."""

from __future__ import annotations

import json
import random
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "moral_stories"


def real_stories(files=("train.jsonl", "dev.jsonl")) -> list[dict]:
    rows = []
    for name in files:
        with open(SHARED / name, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def write_synthetic(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` rows: each a real story whose actions get a few random word swaps, so no two rows repeat."""
    rng = random.Random(seed)
    stories = real_stories()
    vocabulary = sorted({w for s in stories for w in s["moral_action"].split()})
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            story = dict(stories[i % len(stories)])
            for key in ("moral_action", "immoral_action"):
                words = story[key].split()
                for _ in range(2):
                    words[rng.randrange(len(words))] = rng.choice(vocabulary)
                story[key] = " ".join(words)
            story["ID"] = f"syn-{i}"
            f.write(json.dumps(story, ensure_ascii=False) + "\n")
    return path
