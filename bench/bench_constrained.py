"""Cost and effect of decoding constrained to the source, against free decoding of the same rows in the same run.

    python -m bench.bench_constrained --model runs/demo/sft/model --prepared runs/demo/prepared --rows 64

Decodes the split's first rows greedily, as evaluation does (one CPU thread, its batch size and precision), in
three modes: ``free``, ``chain`` (the chain constrained, the target the model's) and ``chain+target`` (the target
forced to the chain's result), each ``--repeats`` times in turn. Prints per mode the best seconds, tokens written,
milliseconds a token and its ratio to free, and the share of rows whose chain is valid and consistent. The
ratio per token is the price of the constraint (its masks are built in Python on the CPU each step); tokens per
row change too, since a constrained chain is not the free one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secondthought.decoding.constraints import Constrain
from secondthought.evaluate.driver import _triples, generate
from secondthought.models.lm import resolve_precision
from secondthought.runs import PreparedDir

MODES = {"free": None, "chain": Constrain(force_target=False), "chain+target": Constrain(force_target=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder that writes chains (e.g. runs/demo/sft/model)")
    parser.add_argument("--prepared", required=True, help="a prepared dataset folder (e.g. runs/demo/prepared)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--rows", type=int, default=64, help="rows decoded in each mode")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode, in turn; the fastest is kept")
    parser.add_argument("--out", type=Path, help="write the figures to this json file")
    args = parser.parse_args()

    rows = _triples(PreparedDir.open(args.prepared), args.split)[: args.rows]
    precision = resolve_precision(args.precision)
    best: dict[str, tuple] = {}
    for repeat in range(args.repeats):
        for name, constrain in MODES.items():
            outputs, seconds = generate(name, args.model, rows, args.max_new_tokens, args.batch_size, precision,
                                        constrain)
            if name not in best or seconds < best[name][1]:
                best[name] = (outputs, seconds)
    free_ms = None
    results = {}
    print(f"\n{len(rows)} rows of {args.prepared} ({args.split}), {precision}, batch {args.batch_size}, 1 thread, "
          f"best of {args.repeats}")
    print(f"{'mode':<14}{'seconds':>9}{'tokens':>8}{'ms/token':>10}{'x free':>8}{'valid':>8}{'consistent':>12}")
    for name, (outputs, seconds) in best.items():
        tokens = sum(o.tokens for o in outputs)
        ms = 1000 * seconds / max(tokens, 1)
        free_ms = free_ms or ms
        valid = sum(o.verdict.valid for o in outputs) / len(outputs)
        consistent = sum(o.verdict.valid and o.verdict.consistent for o in outputs) / len(outputs)
        results[name] = {"seconds": round(seconds, 2), "tokens": tokens, "ms_per_token": round(ms, 2),
                         "ratio_to_free": round(ms / free_ms, 3), "validity": valid, "consistency": consistent}
        print(f"{name:<14}{seconds:>9.1f}{tokens:>8}{ms:>10.2f}{ms / free_ms:>8.2f}{valid:>8.2f}{consistent:>12.2f}")
    if args.out:
        args.out.write_text(json.dumps({"rows": len(rows), "precision": precision, "modes": results}, indent=2))


if __name__ == "__main__":
    main()
