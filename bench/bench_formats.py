"""Which way of writing chains works, at one training budget: edit tokens, words, or no chain at all.

    python -m bench.bench_formats --out runs/formats            # the bundled sample, the main job's budget
    python -m bench.bench_formats --out runs/formats-ms --input ms.jsonl --budget-tokens 79000   # more data

Prepares the same triples three ways (``--prepare.edit_format tokens`` and ``words`` with the three default
cost sets, and ``words`` with the single cost set (1, 1, 1), whose chains replace whole runs of words rather
than interleaving inserts and deletes; the same rows land in the same splits), fine-tunes SmolLM2-135M on each
and the targets-only baseline on the same training tokens (the budget: ``--epochs`` passes over the edit-token
training rows, 2 as in the main job; the others get as many steps as that many tokens take at their own row
lengths), then evaluates all on the same test rows, each chain model free and constrained (``secondthought
eval`` with its judge, metrics and intervals). Prints the table, writes it to ``<out>/formats.json`` and
``--doc`` (markdown) with a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from secondthought.config import PrepareConfig

# prepared folder -> its options; system -> (prepared folder, trained with chains)
PREPARED = {"tokens": PrepareConfig(edit_format="tokens"), "words": PrepareConfig(edit_format="words"),
            "words-111": PrepareConfig(edit_format="words", cost_sets=[(1, 1, 1)])}
PLANS = {"edits-tokens": ("tokens", True), "edits-words": ("words", True), "edits-words-111": ("words-111", True),
         "targets-only": ("tokens", False)}
COLUMNS = ("validity", "consistency", "no_op", "unchanged", "alignment", "bleu", "rouge_l", "perplexity")


def row_tokens(prepared, chains: bool) -> tuple[int, float]:
    """Training rows of the train split and their mean length in tokens, as ``sft`` trains on them (forward
    rows; without chains one per triple and the chain cut out)."""
    import pyarrow.dataset as pads
    from transformers import AutoTokenizer

    from secondthought.chains.text import TGT

    tgt = AutoTokenizer.from_pretrained(prepared.tokenizer).convert_tokens_to_ids(TGT)
    first_costs = prepared.manifest()["cost_sets"][0]
    table = pads.dataset(prepared.split("train"), format="parquet").to_table(
        columns=["direction", "costs", "prompt_len", "input_ids"]).to_pylist()
    lengths = [len(r["input_ids"]) if chains else r["prompt_len"] + len(r["input_ids"]) - r["input_ids"].index(tgt)
               for r in table if r["direction"] == "forward" and (chains or list(r["costs"]) == first_costs)]
    return len(lengths), sum(lengths) / len(lengths)


def colour(name: str) -> str:
    colours = (("111", "tab:olive"), ("words", "tab:green"), ("tokens", "tab:blue"), ("targets", "tab:gray"))
    return next((c for key, c in colours if key in name), "lightgray")


def plot(results: dict, png: Path) -> None:
    from secondthought.tracking import figure

    names = list(results)
    panels = ("validity", "alignment", "bleu")
    with figure(png, 1, len(panels), figsize=(4 * len(panels), 4)) as axes:
        for ax, metric in zip(axes, panels):
            values = [results[n].get(metric) for n in names]
            xs = [k for k, v in enumerate(values) if v is not None]
            ax.bar(xs, [values[k][0] for k in xs],
                   yerr=[[values[k][0] - values[k][1] for k in xs], [values[k][2] - values[k][0] for k in xs]],
                   color=[colour(names[k]) for k in xs], capsize=3)
            ax.set_xticks(xs, [names[k] for k in xs], rotation=35, ha="right", fontsize=8)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)


def cell(value) -> str:
    if value is None:
        return "-"
    point, low, high = value
    digits = 1 if abs(point) >= 10 else 3
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table(results: dict) -> str:
    lines = ["| system | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(m.get(c)) for c in COLUMNS) + " |" for name, m in results.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (prepared data, models, report)")
    parser.add_argument("--input", nargs="*", default=[], help="Moral Stories JSONL files (default: the sample)")
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--epochs", type=float, default=2.0,
                        help="the budget: passes over the edit-token training rows (their tokens)")
    parser.add_argument("--budget-tokens", type=float,
                        help="the budget in training tokens, whatever the data's size (default: set by --epochs)")
    parser.add_argument("--max-rows", type=int, help="evaluate on at most this many test rows")
    parser.add_argument("--systems", nargs="+", choices=list(PLANS), default=list(PLANS),
                        help="the models to train and compare (default: all)")
    parser.add_argument("--doc", type=Path, help="also write the table here (markdown), the plot beside it")
    args = parser.parse_args()

    from secondthought.config import DataConfig, EvalConfig, RayConfig, SFTConfig
    from secondthought.evaluate.driver import run_eval
    from secondthought.prepare.stage import run_prepare
    from secondthought.runs import PreparedDir, ReportDir, TrainingDir, run_once
    from secondthought.runtime import ray_session
    from secondthought.sft.driver import run_sft

    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = DataConfig(dataset="moral-stories" if args.input else "sample", input=args.input,
                      test_fraction=args.test_fraction)
    ray_cfg, sft = RayConfig(), SFTConfig()
    per_step = sft.micro_batch_size * sft.num_workers * sft.grad_accum
    models = {}
    with ray_session(ray_cfg, shared=out):
        prepared = {}
        needed = {"tokens"} | {PLANS[name][0] for name in args.systems}  # tokens: the budget and the test rows
        for name in sorted(needed):
            folder = PreparedDir(out / f"prepared-{name}")
            run_once(f"prepare ({name})", folder.manifest_file, f"chains written in {PREPARED[name].edit_format}",
                     lambda _: run_prepare(data, PREPARED[name], ray_cfg, folder.path, overwrite=True,
                                           progress=False))
            prepared[name] = folder
        rows, mean = row_tokens(prepared["tokens"], chains=True)
        budget = args.budget_tokens or args.epochs * rows * mean  # by default the edit-token rows set it
        steps = {}
        for name in args.systems:
            folder, chains = prepared[PLANS[name][0]], PLANS[name][1]
            rows, mean = row_tokens(folder, chains)
            steps[name] = max(1, math.ceil(budget / (per_step * mean)))
            epochs = math.ceil(steps[name] * per_step / rows) + 1  # enough passes; max_steps ends it
            print(f"[bench] {name}: {rows} training rows of {mean:.1f} tokens -> {steps[name]} steps "
                  f"({steps[name] * per_step * mean:,.0f} tokens)")
            run = TrainingDir(out / name)
            cfg = replace(sft, chains=chains, max_steps=steps[name], epochs=epochs)
            summary = run_once(name, run.summary_file, f"fine-tuning on {name}",
                               lambda unfinished: run_sft(folder.path, cfg, ray_cfg, run.path, resume=unfinished))
            models[name] = summary["model"]
        report_dir = ReportDir(out / "eval")
        report = run_once("eval", report_dir.report_file, "free and constrained, on the same test rows",
                          lambda _: run_eval(prepared["tokens"].path, models, TrainingDir(out / args.systems[0]).base,
                                             EvalConfig(max_rows=args.max_rows), ray_cfg, report_dir.path))
    results = {s["system"]: {c: s["metrics"].get(c) for c in COLUMNS} for s in report["systems"]}
    text = table(results)
    print(f"\nbudget {budget:,.0f} training tokens each; steps {steps}; {report['test_rows']} test rows\n{text}")
    (out / "formats.json").write_text(json.dumps({"budget_tokens": budget, "steps": steps, "rows": report["test_rows"],
                                                  "results": results}, indent=2))
    if args.doc:
        plot(results, args.doc.with_suffix(".png"))
        args.doc.write_text(f"budget {budget:,.0f} training tokens per model, steps {steps}, "
                            f"{report['test_rows']} test rows\n\n{text}\n")


if __name__ == "__main__":
    main()
