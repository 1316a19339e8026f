"""Throughput and peak memory of ``secondthought prepare`` over synthetic Moral Stories rows.

    python -m bench.bench_prepare --rows 1000000 --cpus 1 2

For each CPU count: a fresh local Ray with that many CPUs runs the whole stage (read, validate,
chains for the default cost sets, token ids, Parquet) on the same input. Peak memory is the
largest sum of resident memory over the driver and every process Ray started, sampled 4 times a
second, next to the size of the input and of the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench.synthetic import write_synthetic
from secondthought.config import DataConfig, PrepareConfig, RayConfig
from secondthought.prepare.stage import run_prepare


class PeakMemory:
    """Largest total RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.25):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    work = Path(args.workdir)
    data = work / f"secondthought-synthetic-{args.rows}.jsonl"
    if not data.exists():
        print(f"writing {args.rows:,} synthetic rows to {data}")
        write_synthetic(data, args.rows)
    results = []
    for cpus in args.cpus:
        out = work / f"secondthought-bench-prepare-{cpus}cpu"
        shutil.rmtree(out, ignore_errors=True)
        with PeakMemory() as memory:
            started = time.perf_counter()
            manifest = run_prepare(DataConfig(dataset="moral-stories", input=[str(data)]), PrepareConfig(),
                                   RayConfig(num_cpus=cpus), out, progress=False)
            seconds = time.perf_counter() - started
        results.append({
            "cpus": cpus, "rows": manifest["rows_in"], "chains": manifest["chains_out"], "seconds": round(seconds, 1),
            "rows_per_s": round(manifest["rows_in"] / seconds), "peak_rss_gib": round(memory.peak / 2**30, 2),
            "input_gib": round(data.stat().st_size / 2**30, 2), "output_gib": round(du(out) / 2**30, 2),
        })
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(results, indent=2))
    print(f"{'cpus':>4} {'rows':>10} {'chains':>10} {'seconds':>8} {'rows/s':>8} {'peak RSS':>9} {'input':>7} {'output':>7}")
    for r in results:
        print(f"{r['cpus']:>4} {r['rows']:>10,} {r['chains']:>10,} {r['seconds']:>8} {r['rows_per_s']:>8,} "
              f"{r['peak_rss_gib']:>7}Gi {r['input_gib']:>5}Gi {r['output_gib']:>5}Gi")
    if len(results) > 1:
        print(f"speed-up {results[-1]['cpus']} vs {results[0]['cpus']} CPUs: "
              f"{results[-1]['rows_per_s'] / results[0]['rows_per_s']:.2f}x; target 20,000 rows/s on 2 CPUs")


if __name__ == "__main__":
    main()
