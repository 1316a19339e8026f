"""Accuracy and cost of the evaluation judges on one prepared dataset.

    python -m bench.bench_judge --input ../shared/data/ethics/deontology/deontology_train.csv \\
        --dataset ethics-deontology --prepared runs/bench-judge/prepared --caps 500 2000 0

Each judge (kind x cap on its training triples; 0 = all held-out triples) is trained from scratch
on the training triples held out for the judge and scored on the test split: accuracy (aligned
target above 0.5, unaligned source below), wall time of training and of scoring the test split, and
the ratio of each to the fine-tuned judge on all rows when it is in the run (the old default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from secondthought.config import DataConfig, PrepareConfig, RayConfig
from secondthought.data.schema import judge_held_out
from secondthought.evaluate.judge import Judge, JudgeSpec, Labelled, train
from secondthought.runs import PreparedDir


def triples(prepared: PreparedDir, split: str) -> list:
    from types import SimpleNamespace

    rows, _ = prepared.first_chains(split, ["context", "source", "target"])
    return [SimpleNamespace(**r) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--dataset", default="ethics-deontology")
    parser.add_argument("--prepared", type=Path, required=True, help="prepared here first if not there yet")
    parser.add_argument("--kinds", nargs="+", default=["frozen", "finetune"])
    parser.add_argument("--caps", nargs="+", type=int, default=[500, 2000, 0])
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    prepared = PreparedDir(args.prepared.resolve())
    if not prepared.done:
        from secondthought.prepare.stage import run_prepare

        run_prepare(DataConfig(dataset=args.dataset, input=[args.input]), PrepareConfig(cost_sets=[(1, 1, 1)],
                    reverse=False), RayConfig(num_cpus=2), prepared.path, progress=False)
    held_out = [t for t in triples(prepared, "train") if judge_held_out(t.id)]
    test = Labelled.of_triples(triples(prepared, "test"))
    print(f"{len(held_out)} held-out training triples, {len(test.texts) // 2} test triples")
    results = []
    for kind in args.kinds:
        for cap in args.caps:
            rows = held_out[:cap] if cap else held_out
            spec = JudgeSpec(kind=kind, encoder=args.encoder, max_train_rows=cap or None)
            with tempfile.TemporaryDirectory() as folder:
                started = time.time()
                train(spec, Labelled.of_triples(rows), Path(folder), progress=True)
                trained = time.time() - started
                started = time.time()
                p = Judge(folder).probabilities(test.contexts, test.texts)
                scored = time.time() - started
            accuracy = float(np.mean((p > 0.5) == (test.labels == 1)))
            results.append({"kind": kind, "train_triples": len(rows), "accuracy": round(accuracy, 4),
                            "train_s": round(trained, 1), "score_s": round(scored, 1)})
            print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["kind"] == "finetune" and r["train_triples"] == len(held_out)), None)
    print(f"\n| judge | training triples | test accuracy | train s | score s |{' time vs fine-tuned, all |' if base else ''}")
    print("|---|---|---|---|---|" + ("---|" if base else ""))
    for r in results:
        ratio = f" {r['train_s'] / base['train_s']:.3f}x |" if base else ""
        print(f"| {r['kind']} | {r['train_triples']} | {r['accuracy']:.3f} | {r['train_s']:.0f} | {r['score_s']:.0f} |{ratio}")
    if args.json:
        args.json.write_text(json.dumps({"held_out": len(held_out), "test": len(test.texts) // 2,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
