"""Wall time and curve of ``secondthought transfer`` in fp32 (the former numerics) against the defaults.

    python -m bench.bench_transfer --model runs/demo/sft/model \\
        --input ../shared/data/ethics/deontology/deontology_train.csv --out runs/bench-transfer

Runs the user's command twice, one after the other, from scratch: ``fp32`` (adaptation and decoding in
fp32, as before precision "auto" existed) and ``default`` (the current defaults: bf16 where the
machine has fast bf16 kernels). Prints each run's time by phase and the ratio to fp32, and per k the
alignment, BLEU and validity with their 95% bootstrap intervals, saying whether the default's point lies
inside fp32's interval. Writes ``OUT/bench.json`` and the curves to ``OUT/transfer-curve.png``.
A run the bench finished in OUT is reused, not redone (delete it to measure again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from secondthought.evaluate.driver import _cell
from secondthought.tracking import figure, label

VARIANTS = {"fp32": ["--transfer.precision", "fp32", "--eval.precision", "fp32"], "default": []}
METRICS = ("alignment", "bleu", "validity")


def run(name: str, args: argparse.Namespace) -> dict:
    """One transfer command; its time by phase read back from what it wrote."""
    out = args.out / name
    command = [os.path.join(os.path.dirname(sys.executable), "secondthought"), "transfer", "--model", str(args.model),
               "--data.dataset", args.dataset, "--data.input", str(args.input), "--out", str(out), *VARIANTS[name],
               *args.extra]
    times_file = out / "times.json"
    if not times_file.is_file():
        print(f"== {name}: {' '.join(command)}", flush=True)
        started = time.time()
        subprocess.run(command, check=True)
        times = {"wall": round(time.time() - started, 1)}
        times |= {f"k={k}": json.loads((out / f"k{k}" / "summary.json").read_text())["seconds"] for k in shots(out)}
        times["eval"] = json.loads((out / "eval" / "report.json").read_text())["seconds"]
        times_file.write_text(json.dumps(times))
    times = json.loads(times_file.read_text())
    report = json.loads((out / "eval" / "report.json").read_text())
    systems = {s["system"]: s["metrics"] for s in report["systems"]}
    return {"times": times, "precision": report["precision"], "judge_accuracy": report["judge"]["held_out_accuracy"],
            "metrics": {system: {m: systems[system].get(m) for m in METRICS} for system in systems}}


def shots(out: Path) -> list[int]:
    return [k for k in json.loads((out / "config.json").read_text())["transfer"]["shots"] if k > 0]


def inside(value, interval) -> bool:
    return value is None or interval is None or interval[1] <= value[0] <= interval[2]


def plot(results: dict, png: Path) -> None:
    systems = [s for s in results["fp32"]["metrics"] if s.startswith("k=")]
    with figure(png, 1, len(METRICS), figsize=(4.5 * len(METRICS), 3.8)) as axes:
        for ax, metric in zip(axes, METRICS):
            for offset, (name, result) in zip((-0.1, 0.1), results.items()):
                values = [result["metrics"][s][metric] for s in systems]
                xs = [i + offset for i, v in enumerate(values) if v]
                values = [v for v in values if v]
                ax.errorbar(xs, [v[0] for v in values], yerr=[[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]],
                            fmt="o-", capsize=4, label=f"{name} ({result['precision']})")
            ax.set_xticks(range(len(systems)), systems)
            ax.set_title(metric)
            label(ax, "examples adapted with", metric)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model folder written by sft or rl")
    parser.add_argument("--input", type=Path, required=True, help="the dataset's file")
    parser.add_argument("--dataset", default="ethics-deontology")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("extra", nargs="*", help="more flags for both runs, after --")
    args = parser.parse_args()
    args.out = args.out.resolve()
    results = {name: run(name, args) for name in VARIANTS}
    base, new = results["fp32"], results["default"]
    print(f"\nprecision: fp32 run {base['precision']}, default run {new['precision']}; judge accuracy "
          f"{base['judge_accuracy']:.3f} / {new['judge_accuracy']:.3f}")
    print(f"{'phase':>10} {'fp32 s':>8} {'default s':>10} {'ratio':>6}")
    for phase in base["times"]:
        a, b = base["times"][phase], new["times"][phase]
        print(f"{phase:>10} {a:8.1f} {b:10.1f} {a / b:6.2f}")
    print(f"\n{'system':>10} {'metric':>10} {'fp32':>26} {'default':>26}  default inside fp32's interval")
    for system, metrics in base["metrics"].items():
        for metric, value in metrics.items():
            other = new["metrics"][system][metric]
            if value is None:
                continue
            print(f"{system:>10} {metric:>10} {_cell(value):>26} {_cell(other):>26}  {inside(other, value)}")
    (args.out / "bench.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "transfer-curve.png")
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'transfer-curve.png'}")


if __name__ == "__main__":
    main()
