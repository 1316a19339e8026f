"""``secondthought``: one command line for every stage. ``secondthought STAGE --help`` explains each."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from secondthought.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    PrepareConfig,
    RayConfig,
    RLConfig,
    SFTConfig,
    TransferConfig,
)
from secondthought.runtime import loopback_only

set_parsing_settings(docstring_parse_attribute_docstrings=True)

SECTIONS = {"data": DataConfig, "prepare": PrepareConfig, "sft": SFTConfig, "rl": RLConfig, "eval": EvalConfig,
            "transfer": TransferConfig, "ray": RayConfig}


def _stage_parser(description: str, sections: tuple[str, ...]) -> ArgumentParser:
    parser = ArgumentParser(description=description, exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    for name in sections:
        parser.add_class_arguments(SECTIONS[name], name, fail_untyped=True, sub_configs=True)
    return parser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="secondthought",
        description="Re-align a language model by teaching it to edit unaligned text into aligned text "
        "(chain-of-edits, fine-tuning, RL). Each stage reads and writes a run directory.",
    )
    commands = parser.add_subcommands(dest="command")

    prepare = _stage_parser(
        "Read a dataset, quarantine bad rows, compute chains of edits for every cost set, tokenize, and write "
        "Parquet shards (out/data/<split>/), out/manifest.json and out/quarantine.jsonl. Runs on Ray Data: a "
        "local Ray by default, a cluster with --ray.address.",
        ("data", "prepare", "ray"),
    )
    prepare.add_argument("--out", required=True, help="output directory")
    prepare.add_argument("--overwrite", type=bool, default=False, help="replace an earlier prepared output")
    prepare.add_argument("--progress", type=bool, default=True, help="show a progress bar")
    commands.add_subcommand("prepare", prepare, help="dataset -> chains of edits -> token ids (Ray Data)")

    sft = _stage_parser(
        "Fine-tune the LM on prepared chains of edits (forward direction) with Ray Train and DeepSpeed: "
        "N workers, ZeRO 0-3, eval every K steps, early stopping, checkpoints (--resume continues the latest; "
        "a worker that dies is restarted from it). Writes out/model (best by eval loss, Hugging Face "
        "safetensors), out/metrics.jsonl, out/tensorboard, out/loss.png, out/summary.json.",
        ("sft", "ray"),
    )
    sft.add_argument("--prepared", required=True, help="output directory of `secondthought prepare`")
    sft.add_argument("--out", required=True, help="output directory")
    sft.add_argument("--resume", type=bool, default=False, help="continue an unfinished run from its latest checkpoint")
    sft.add_argument("--overwrite", type=bool, default=False, help="replace an earlier run in --out")
    commands.add_subcommand("sft", sft, help="fine-tune on chains of edits (Ray Train + DeepSpeed)")

    rl = _stage_parser(
        "Refine the fine-tuned model by RL (adversarial imitation, PPO) on plain Ray actors: rollout workers sample "
        "chains of edits, a discriminator (MiniLM) scores them against gold chains, an edit-validity term checks "
        "that each chain applies to its source and gives the written target, a frozen reference keeps the policy "
        "near the SFT model (adaptive KL), and a DeepSpeed learner group runs PPO. Writes out/model (Hugging Face "
        "safetensors), out/metrics.jsonl, out/tensorboard, out/rl.png, out/summary.json and out/checkpoints "
        "(--resume continues the newest; a dead rollout worker is restarted and its prompts redone).",
        ("rl", "ray"),
    )
    rl.add_argument("--prepared", required=True, help="output directory of `secondthought prepare`")
    rl.add_argument("--policy", required=True, help="the model/ folder of `secondthought sft`")
    rl.add_argument("--out", required=True, help="output directory")
    rl.add_argument("--resume", type=bool, default=False, help="continue an unfinished run from its newest checkpoint")
    rl.add_argument("--overwrite", type=bool, default=False, help="replace an earlier run in --out")
    commands.add_subcommand("rl", rl, help="refine by RL: discriminator reward + PPO on Ray actors")

    evaluate = _stage_parser(
        "Evaluate systems on the prepared test split: 'copy' (the source) and 'reference' (the human target) "
        "always, plus each model given with --models. Trains the alignment judge (MiniLM) on the training triples "
        "the RL stage never uses and reports its held-out accuracy. Writes out/report.json, out/report.md (table "
        "with 95%% bootstrap intervals, examples as word diffs), out/metrics.png, out/completions.jsonl.",
        ("eval", "ray"),
    )
    evaluate.add_argument("--prepared", required=True, help="output directory of `secondthought prepare`")
    evaluate.add_argument("--models", type=dict[str, str], required=True,
                          help='system name -> model folder, e.g. \'{"sft": "runs/demo/sft/model", "rl": "runs/demo/rl/model"}\'')
    evaluate.add_argument("--base", required=True, help="the base LM folder for perplexity (e.g. runs/demo/sft/base)")
    evaluate.add_argument("--out", required=True, help="output directory")
    commands.add_subcommand("eval", evaluate, help="judge + BLEU/ROUGE/perplexity/validity report for each system")

    transfer = _stage_parser(
        "Few-shot transfer: prepare another dataset (e.g. --data.dataset ethics-deontology --data.input "
        "deontology_train.csv) with the model's tokenizer, fine-tune the model on k of its training triples for each "
        "k in --transfer.shots (0: as it is), and evaluate every adapted model on its test split. Writes "
        "out/k<k>/model, out/eval/report.md and out/transfer.json.",
        ("data", "transfer", "eval", "ray"),
    )
    transfer.add_argument("--model", required=True, help="a fine-tuned model folder, e.g. runs/demo/sft/model")
    transfer.add_argument("--base", default=None, help="base LM for perplexity (default: the model's ../base)")
    transfer.add_argument("--out", required=True, help="output directory")
    commands.add_subcommand("transfer", transfer, help="few-shot transfer to another dataset, k in {0, 10, 100}")

    pipeline = _stage_parser(
        "The main job: prepare -> fine-tune (with edits, and the targets-only baseline) -> RL -> evaluate into one run directory, on the embedded defaults unless told "
        "otherwise (the bundled sample, SmolLM2-135M-Instruct, a local Ray). A finished stage is not redone "
        "when the command runs again; an unfinished fine-tuning run continues from its checkpoint.",
        ("data", "prepare", "sft", "rl", "eval", "ray"),
    )
    pipeline.add_argument("--out", default="runs/demo", help="run directory")
    pipeline.add_argument("--baseline", type=bool, default=True,
                          help="also fine-tune the 'SFT on targets only' baseline (no chains of edits) and evaluate it")
    pipeline.add_argument("--progress", type=bool, default=True, help="show progress bars")
    commands.add_subcommand("pipeline", pipeline, help="the whole pipeline into one run directory")

    edits = ArgumentParser(description="Show the chain of edits from SOURCE to TARGET: serialized and in plain English.")
    edits.add_argument("source", help="the unaligned text")
    edits.add_argument("target", help="the aligned text")
    edits.add_argument("--costs", type=tuple[float, float, float], default=(1, 1, 1),
                       help="(insert, delete, replace) cost of one word")
    commands.add_subcommand("edits", edits, help="show the chain of edits between two texts")
    return parser


def _sections(cfg, names: tuple[str, ...]) -> dict:
    return {name: SECTIONS[name](**cfg[name].as_dict()) for name in names}


def run(argv: list[str] | None = None) -> int:
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the stages show their own progress
    parser = build_parser()
    cfg = parser.parse_args(argv)
    command = cfg.command
    sub = cfg[command]
    if "ray" in sub and not sub.ray.address:
        loopback_only()  # before anything imports Ray
    try:
        if command == "prepare":
            from secondthought.prepare import run_prepare

            sections = _sections(sub, ("data", "prepare", "ray"))
            manifest = run_prepare(sections["data"], sections["prepare"], sections["ray"], sub.out,
                                   overwrite=sub.overwrite, progress=sub.progress)
            shown = {k: manifest[k] for k in ("rows_in", "rows_out", "rows_quarantined", "chains_out",
                                              "quarantine_reasons", "seconds", "rows_per_second")}
            print(json.dumps(shown, indent=2))
            print(f"wrote {sub.out}/data/, {sub.out}/manifest.json, {sub.out}/quarantine.jsonl")
        elif command == "sft":
            from secondthought.sft import run_sft

            sections = _sections(sub, ("sft", "ray"))
            summary = run_sft(sub.prepared, sections["sft"], sections["ray"], sub.out, resume=sub.resume,
                              overwrite=sub.overwrite)
            print(json.dumps(summary, indent=2))
        elif command == "rl":
            from secondthought.rl.loop import run_rl

            sections = _sections(sub, ("rl", "ray"))
            summary = run_rl(sub.prepared, sub.policy, sections["rl"], sections["ray"], sub.out, resume=sub.resume,
                             overwrite=sub.overwrite)
            print(json.dumps(summary, indent=2))
        elif command == "eval":
            from secondthought.evaluate import run_eval

            sections = _sections(sub, ("eval", "ray"))
            report = run_eval(sub.prepared, sub.models, sub.base, sections["eval"], sections["ray"], sub.out)
            print((Path(sub.out) / "report.md").read_text().split("## Examples")[0])
            print(f"wrote {sub.out}/report.json, report.md, metrics.png (judge held-out accuracy "
                  f"{report['judge']['held_out_accuracy']:.3f})")
        elif command == "transfer":
            from secondthought.transfer import run_transfer

            sections = _sections(sub, ("data", "transfer", "eval", "ray"))
            result = run_transfer(sub.model, sections["data"], sections["transfer"], sections["eval"],
                                  sections["ray"], sub.out, base=sub.base)
            print(json.dumps(result, indent=2))
        elif command == "pipeline":
            from secondthought.pipeline import describe, run_pipeline

            sections = _sections(sub, ("data", "prepare", "sft", "rl", "eval", "ray"))
            summary = run_pipeline(sections["data"], sections["prepare"], sections["sft"], sections["rl"],
                                   sections["eval"], sections["ray"], sub.out, progress=sub.progress,
                                   baseline=sub.baseline)
            print(describe(summary))
        elif command == "edits":
            from secondthought.edits import compute_edits, decipher, serialize

            chain = compute_edits(sub.source, sub.target, tuple(sub.costs))
            print(serialize(chain))
            print(decipher(chain))
            print(f"cost {chain.cost:g}")
    except ConfigError as e:
        print(f"secondthought {command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
