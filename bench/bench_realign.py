"""What a user of the server gets on real text: the served answer against the targets-only baseline on Moral Stories
dev rows, trained on Moral Stories training rows at a stated budget.

    python -m bench.bench_realign --out runs/realign --train 600 --dev 150 --steps 40 80

Writes ``<out>/data/moral-stories.jsonl`` (the first ``--train`` rows of ``../shared/data/moral_stories/train.jsonl``
marked train, the next ``--eval`` marked eval, the first ``--dev`` of ``dev.jsonl`` marked test: the reported rows
are never trained or tuned on), prepares it once (chains in words, the default), and for each budget (optimizer
steps, the same for every model: the same rows in the same order) fine-tunes SmolLM2-135M as the targets-only
baseline and as a chain model (``--sft.direct_targets``, the default share, or several with ``--direct``). Each
budget is evaluated with ``secondthought eval`` (its judge on held-out training triples, greedy decoding): the
chain model free, constrained (target forced) and derived. Prints, per budget, each system's alignment, its
paired difference against targets only (95% bootstrap interval over the same rows), perplexity under the base LM
and its ratio to the baseline's, validity, consistency, BLEU and decoding seconds; writes them to
``<out>/realign.json`` and, with ``--doc``, a markdown table.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "moral_stories"
BASELINE = "targets-only"


def write_data(out: Path, train: int, eval_rows: int, dev: int, data: Path) -> Path:
    """The bench's input: training, eval and dev rows, each marked with its split (outside the repository)."""
    path = out / "data" / "moral-stories.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(data / "train.jsonl") as f:
        rows = [dict(json.loads(line), split="train") for line in islice(f, train)]
        rows += [dict(json.loads(line), split="eval") for line in islice(f, eval_rows)]
    with open(data / "dev.jsonl") as f:
        rows += [dict(json.loads(line), split="test") for line in islice(f, dev)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def paired(completions: list[dict], system: str, baseline: str, seed: int = 0) -> tuple[float, float, float]:
    """Mean per-row alignment difference ``system - baseline`` with its 95% bootstrap interval."""
    from secondthought.evaluate.stats import bootstrap

    return bootstrap(np.array([r["alignment"][system] - r["alignment"][baseline] for r in completions]), seed=seed)


def results_of(report_dir: Path, baseline: str) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    completions = [json.loads(line) for line in (report_dir / "completions.jsonl").read_text().splitlines()]
    base_ppl = next(s for s in report["systems"] if s["system"] == baseline)["metrics"]["perplexity"][0]
    out = {}
    for s in report["systems"]:
        m = s["metrics"]
        out[s["system"]] = {
            "alignment": m["alignment"], "vs_targets_only": paired(completions, s["system"], baseline),
            "perplexity": m["perplexity"][0], "perplexity_ratio": m["perplexity"][0] / base_ppl,
            "validity": m.get("validity"), "consistency": m.get("consistency"), "bleu": m["bleu"][0],
            "seconds": s.get("decoding", {}).get("seconds"), "served": s["system"] == report["served"]}
    return {"test_rows": report["test_rows"], "judge_accuracy": report["judge"]["held_out_accuracy"], "systems": out}


def _interval(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    point, low, high = value
    return f"{point:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]" if low < 0 or point < 0 else \
        f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table(result: dict) -> str:
    lines = ["| system | alignment | minus targets only (paired) | perplexity | x baseline | validity | consistency "
             "| BLEU | decoding s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["systems"].items():
        lines.append(" | ".join([
            f"| {name}" + (" **served**" if r["served"] else ""), _interval(r["alignment"]),
            _interval(r["vs_targets_only"]) if name != BASELINE else "0", f"{r['perplexity']:.1f}",
            f"{r['perplexity_ratio']:.2f}", _interval(r["validity"], 2) if r["validity"] else "-",
            f"{r['consistency'][0]:.2f}" if r["consistency"] else "-", f"{r['bleu']:.1f}",
            f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (data, prepared, models, reports)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of Moral Stories train.jsonl and dev.jsonl")
    parser.add_argument("--train", type=int, default=600, help="training triples (the first rows of train.jsonl)")
    parser.add_argument("--eval", type=int, default=40, help="eval triples for the eval loss (the next rows)")
    parser.add_argument("--dev", type=int, default=150, help="dev rows reported on (the first rows of dev.jsonl)")
    parser.add_argument("--steps", type=int, nargs="+", default=[60], help="budgets: optimizer steps per model")
    parser.add_argument("--direct", type=float, nargs="+",
                        help="--sft.direct_targets of the chain models (default: the config's default)")
    parser.add_argument("--doc", type=Path, help="also write the tables here (markdown)")
    args = parser.parse_args()

    from secondthought.config import DataConfig, EvalConfig, PrepareConfig, RayConfig, SFTConfig
    from secondthought.evaluate.driver import run_eval
    from secondthought.prepare.stage import run_prepare
    from secondthought.runs import PreparedDir, ReportDir, TrainingDir, run_once
    from secondthought.runtime import ray_session
    from secondthought.sft.driver import run_sft

    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = DataConfig(dataset="moral-stories", input=[str(write_data(out, args.train, args.eval, args.dev, args.data))])
    ray_cfg, sft = RayConfig(), SFTConfig()
    shares = args.direct or [sft.direct_targets]
    per_step = sft.micro_batch_size * sft.num_workers * sft.grad_accum
    results = {}
    with ray_session(ray_cfg, shared=out):
        prepared = PreparedDir(out / "prepared")
        run_once("prepare", prepared.manifest_file, "Moral Stories rows, chains in words",
                 lambda _: run_prepare(data, PrepareConfig(), ray_cfg, prepared.path, overwrite=True, progress=False))
        for steps in args.steps:
            plans = {BASELINE: replace(sft, chains=False)}
            plans |= {f"chains-direct{share:g}": replace(sft, direct_targets=share) for share in shares}
            models = {}
            for name, cfg in plans.items():
                run = TrainingDir(out / f"steps{steps}" / name)
                cfg = replace(cfg, max_steps=steps, epochs=100, patience=0, eval_every=max(1, steps // 4))
                summary = run_once(f"{name} ({steps} steps)", run.summary_file,
                                   f"fine-tuning {steps} steps of {per_step} rows",
                                   lambda unfinished: run_sft(prepared.path, cfg, ray_cfg, run.path, resume=unfinished))
                models[name] = summary["model"]
            report_dir = ReportDir(out / f"steps{steps}" / "eval")
            run_once(f"eval ({steps} steps)", report_dir.report_file, "every decoding on the dev rows",
                     lambda _: run_eval(prepared.path, models, TrainingDir(out / f"steps{steps}" / BASELINE).base,
                                        EvalConfig(), ray_cfg, report_dir.path))
            results[steps] = results_of(report_dir.path, BASELINE)
            print(f"\n{steps} steps of {per_step} rows, {results[steps]['test_rows']} dev rows, judge held-out accuracy "
                  f"{results[steps]['judge_accuracy']:.3f}\n{table(results[steps])}", flush=True)
    (out / "realign.json").write_text(json.dumps({"train": args.train, "dev": args.dev, "results": results}, indent=2))
    if args.doc:
        args.doc.write_text("\n\n".join(
            f"### {steps} steps of {per_step} rows ({args.train} training triples, {r['test_rows']} dev rows, judge "
            f"held-out accuracy {r['judge_accuracy']:.3f})\n\n{table(r)}" for steps, r in results.items()) + "\n")


if __name__ == "__main__":
    main()
