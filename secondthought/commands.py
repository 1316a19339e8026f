"""What each command of ``secondthought`` does once its flags are parsed (``cli`` parses them): run its stage and
say what it wrote. Each imports its stage only when called, after Ray's loopback switch is set."""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse import Namespace

from secondthought.config import ConfigError
from secondthought.console import say


def prepare(args: Namespace, s: dict) -> None:
    from secondthought.prepare.stage import run_prepare

    manifest = run_prepare(s["data"], s["prepare"], s["ray"], args.out, overwrite=args.overwrite,
                           progress=args.progress)
    shown = {k: manifest[k] for k in ("rows_in", "rows_out", "rows_quarantined", "chains_out", "quarantine_reasons",
                                      "seconds", "rows_per_second")}
    say(json.dumps(shown, indent=2))
    say(f"wrote {args.out}/data/, {args.out}/manifest.json, {args.out}/quarantine.jsonl")


def sft(args: Namespace, s: dict) -> None:
    from secondthought.sft.driver import run_sft

    say(json.dumps(run_sft(args.prepared, s["sft"], s["ray"], args.out, resume=args.resume,
                             overwrite=args.overwrite), indent=2))


def rl(args: Namespace, s: dict) -> None:
    from secondthought.rl.driver import run_rl

    say(json.dumps(run_rl(args.prepared, args.policy, s["rl"], s["ray"], args.out, resume=args.resume,
                            overwrite=args.overwrite), indent=2))


def evaluate(args: Namespace, s: dict) -> None:
    from secondthought.evaluate.driver import run_eval
    from secondthought.runs import ReportDir

    report = run_eval(args.prepared, args.models, args.base, s["eval"], s["ray"], args.out)
    say(ReportDir(Path(args.out)).markdown.read_text().split("## Examples")[0])
    say(f"wrote {args.out}/report.json, report.md, metrics.png (judge held-out accuracy "
          f"{report['judge']['held_out_accuracy']:.3f})")


def transfer(args: Namespace, s: dict) -> None:
    from secondthought.transfer import run_transfer

    say(json.dumps(run_transfer(args.model, s["data"], s["transfer"], s["eval"], s["ray"], args.out,
                                  base=args.base), indent=2))


def pipeline(args: Namespace, s: dict) -> None:
    from secondthought.pipeline import describe, run_pipeline

    say(describe(run_pipeline(s["data"], s["prepare"], s["sft"], s["rl"], s["eval"], s["ray"], args.out,
                                progress=args.progress, baseline=args.baseline)))


def humaneval(args: Namespace, s: dict) -> None:
    from secondthought.evaluate import humaneval

    if args.action == "export":
        if not args.report:
            raise ConfigError("humaneval export needs --report (an evaluation's output directory)")
        done = humaneval.export(args.report, args.out, s["humaneval"])
        say(f"wrote {done['items']} items of {len(done['systems'])} systems: {done['sheet']} and {done['form']} "
            f"(for the raters), {done['key']} (the key: keep it from the raters)")
        return
    if not args.export or not args.sheets:
        raise ConfigError("humaneval import needs --export (the exported folder, for its key) and --sheets "
                          "(the raters' filled sheets)")
    humaneval.import_sheets(args.export, args.sheets, args.out, s["humaneval"])
    say((Path(args.out) / "humaneval.md").read_text())
    say(f"wrote {args.out}/humaneval.json, humaneval.md")


def edits(args: Namespace, s: dict) -> None:
    from secondthought.chains.edits import check_costs, compute_edits, decipher
    from secondthought.chains.formats import FORMATS
    from secondthought.chains.text import reserved_token

    try:
        costs = check_costs(tuple(args.costs))
    except ValueError as e:
        raise ConfigError(f"--costs: {e}") from None
    for name in ("source", "target"):
        if token := reserved_token(args[name]):
            raise ConfigError(f"the {name} holds {token}, a token reserved for the training text's structure")
    chain = compute_edits(args.source, args.target, costs)
    for fmt in FORMATS.values():
        print(fmt.write(chain, args.source).strip())
    print(decipher(chain))
    print(f"cost {chain.cost:g}")
