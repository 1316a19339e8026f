"""Load test of the Serve application: requests/s and p50/p90/p99 latency at several concurrencies, with batching
on and off, in one run (so the ratio is measured on one machine, at one time).

    python -m serve.loadtest --model runs/demo/sft/model                 # CPU, the fine-tuned SmolLM2
    python -m serve.loadtest --model runs/demo/sft/model --gpu            # on a GPU machine

It starts its own Ray on loopback, deploys serve/config.yaml with the model (one model replica with the
config's CPUs and threads, so that the comparison is batching alone), and sends POST /v1/realign requests built from the bundled sample to 127.0.0.1
only: a warm-up, then a fixed number of requests at each concurrency, each level bounded in time. Then a soak of
--soak requests at the highest concurrency with batching on, counting every non-200 answer. Prints a table and
the batched / unbatched throughput ratio; --out writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

from secondthought.runtime import loopback_only

APP = "secondthought"


def bodies(n: int, max_tokens: int) -> list[dict]:
    from secondthought.config import DataConfig
    from secondthought.data import plan, triples

    cfg = DataConfig()
    found = [t for chunk in plan(cfg, 1 << 24) for t in triples(chunk, cfg) if hasattr(t, "context")]
    return [{"context": t.context, "text": t.source, "generation": {"max_tokens": max_tokens}}
            for t in (found[k % len(found)] for k in range(n))]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


async def drive(url: str, work: list[dict], concurrency: int, limit_s: float) -> dict:
    """Send ``work`` with at most ``concurrency`` requests in flight; stop starting new ones after ``limit_s``."""
    import aiohttp

    latencies: list[float] = []
    codes: dict[int, int] = {}
    queue = list(reversed(work))
    deadline = time.monotonic() + limit_s

    async def client(session):
        while queue and time.monotonic() < deadline:
            body = queue.pop()
            start = time.monotonic()
            try:
                async with session.post(url + "/v1/realign", json=body) as r:
                    await r.read()
                    code = r.status
            except aiohttp.ClientError:
                code = -1
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                latencies.append(time.monotonic() - start)

    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    wall = time.monotonic() - started
    return {"concurrency": concurrency, "requests": sum(codes.values()), "ok": len(latencies), "codes": codes,
            "seconds": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * percentile(latencies, 50)), "p90_ms": round(1000 * percentile(latencies, 90)),
            "p99_ms": round(1000 * percentile(latencies, 99))}


def deploy_for_load(model: str, port: int, batch: int, gpu: bool) -> str:
    """The shipped config with one model replica of ``batch``; an earlier deployment is deleted first (an
    update would start the new replica beside the old one, and a small machine has no room for both)."""
    from ray import serve

    from serve.deploy import CONFIG, GPU_CONFIG, deploy, load_config

    if APP in serve.status().applications:
        serve.delete(APP)

    raw = load_config(GPU_CONFIG if gpu else CONFIG, model, "127.0.0.1", port)
    raw["proxy_location"] = "HeadOnly"
    args = raw["applications"][0]["args"]
    args.update(max_batch_size=batch)
    for d in raw["applications"][0]["deployments"]:
        if d["name"] == "Api":
            d["num_replicas"] = 1
        if d["name"] == "Realigner":  # one replica: the comparison is batching alone
            d.pop("autoscaling_config", None)
            d["num_replicas"] = 1
    return deploy(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder to serve (e.g. runs/demo/sft/model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[16, 64, 160],
                        help="requests measured at each concurrency (after a warm-up)")
    parser.add_argument("--batch-size", type=int, default=8, help="max_batch_size with batching on")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens each request may write")
    parser.add_argument("--level-seconds", type=float, default=240, help="stop a level after this long")
    parser.add_argument("--soak", type=int, default=2000, help="requests of the final soak (batching on)")
    parser.add_argument("--soak-max-tokens", type=int, default=4,
                        help="tokens each soak request may write (the soak counts errors, not throughput)")
    parser.add_argument("--gpu", action="store_true", help="deploy serve/config.gpu.yaml (one GPU per replica)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    a = parser.parse_args()
    if len(a.requests) != len(a.concurrency):
        parser.error("give one --requests count per --concurrency level")

    loopback_only()
    import ray
    from ray import serve

    from secondthought.runtime import shutdown

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             num_cpus=max(2, os.cpu_count() or 1))
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
                     "model": str(a.model), "max_tokens": a.max_tokens, "levels": {}}
    try:
        for mode, batch in (("batched", a.batch_size), ("unbatched", 1)):
            url = deploy_for_load(a.model, a.port, batch, a.gpu)
            asyncio.run(drive(url, bodies(8, a.max_tokens), 4, 120))  # warm-up
            for concurrency, n in zip(a.concurrency, a.requests):
                row = asyncio.run(drive(url, bodies(n, a.max_tokens), concurrency, a.level_seconds))
                results["levels"].setdefault(mode, []).append(row)
                print(f"{mode:9s} c={concurrency:<3d} {row['requests_per_s']:7.2f} req/s  p50 {row['p50_ms']:6d} ms  "
                      f"p90 {row['p90_ms']:6d} ms  p99 {row['p99_ms']:6d} ms  ({row['ok']}/{row['requests']} ok, "
                      f"{row['seconds']} s)", flush=True)
        if a.soak:
            url = deploy_for_load(a.model, a.port, a.batch_size, a.gpu)
            soak = asyncio.run(drive(url, bodies(a.soak, a.soak_max_tokens), max(a.concurrency), 3600))
            results["soak"] = soak
            errors = sum(v for k, v in soak["codes"].items() if k != 200)
            print(f"soak: {soak['requests']} requests at c={soak['concurrency']}, {soak['requests_per_s']} req/s, "
                  f"codes {soak['codes']}, {errors} not 200", flush=True)
    finally:
        serve.shutdown()
        shutdown(started_here=True)
    batched = {r["concurrency"]: r["requests_per_s"] for r in results["levels"].get("batched", [])}
    unbatched = {r["concurrency"]: r["requests_per_s"] for r in results["levels"].get("unbatched", [])}
    results["batching_speedup"] = {c: round(batched[c] / unbatched[c], 2) for c in batched
                                   if unbatched.get(c)}
    print("batched / unbatched throughput:", ", ".join(f"c={c}: {r}x" for c, r in results["batching_speedup"].items()))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
