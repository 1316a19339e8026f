"""``secondthought``: one command line for every stage. ``secondthought STAGE --help`` explains each.

COMMANDS is the table both the parser and the dispatcher read: a command's config sections, its own arguments, and
the function that runs it (``commands``; ``jobs.submit`` and ``serve.deploy`` named as ``module:function``, imported
when the command runs: they build on this table, so importing them here would make a circle). The dispatcher
parses once, keeps the log, and turns errors into one line and an exit status.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

from secondthought import commands
from secondthought.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    HumanEvalConfig,
    PrepareConfig,
    RayConfig,
    RLConfig,
    SFTConfig,
    TransferConfig,
)
from secondthought.console import captured, say
from secondthought.runs import MARKER
from secondthought.runtime import interrupt_on_sigterm, loopback_only

set_parsing_settings(docstring_parse_attribute_docstrings=True)

SECTIONS = {"data": DataConfig, "prepare": PrepareConfig, "sft": SFTConfig, "rl": RLConfig, "eval": EvalConfig,
            "transfer": TransferConfig, "humaneval": HumanEvalConfig, "ray": RayConfig}

PREPARED = ("--prepared", dict(required=True, help="output directory of `secondthought prepare`"))
OUT = ("--out", dict(required=True, help="output directory"))
RESUME = ("--resume", dict(type=bool, default=False, help="continue an unfinished run from its latest checkpoint"))
OVERWRITE = ("--overwrite", dict(type=bool, default=False, help="replace an earlier run in --out"))
PROGRESS = ("--progress", dict(type=bool, default=True, help="show progress bars"))
VERBOSE = ("--verbose", dict(type=bool, default=False,
                             help="show everything on the terminal (Ray, DeepSpeed, transformers, the workers' output), "
                                  "not only the project's progress and errors; the full log is written either way"))


@dataclass(frozen=True)
class Command:
    help: str
    """One line in ``secondthought --help``."""
    description: str
    """The command's own ``--help``."""
    sections: tuple[str, ...]
    """Config sections it takes (``--data.*``, ``--sft.*``, ...) and hands to ``run``."""
    arguments: tuple[tuple[str, dict], ...]
    run: Callable[[Namespace, dict], int | None] | str
    """Runs the command (may return its exit status); or its ``module:function`` name."""
    job: bool = False
    """Can run on a cluster as a Ray job (``secondthought submit -- COMMAND ...``)."""

    def runner(self) -> Callable[[Namespace, dict], int | None]:
        if callable(self.run):
            return self.run
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)


COMMANDS = {
    "prepare": Command(
        "dataset -> chains of edits -> token ids (Ray Data)",
        "Read a dataset, quarantine bad rows, compute chains of edits for every cost set, tokenize, and write "
        "Parquet shards (out/data/<split>/), out/manifest.json and out/quarantine.jsonl. Runs on Ray Data: a "
        "local Ray by default, a cluster with --ray.address.",
        ("data", "prepare", "ray"),
        (OUT, ("--overwrite", dict(type=bool, default=False, help="replace an earlier prepared output")),
         ("--progress", dict(type=bool, default=True, help="show a progress bar"))),
        commands.prepare, job=True),
    "sft": Command(
        "fine-tune on chains of edits (Ray Train + DeepSpeed)",
        "Fine-tune the LM on prepared chains of edits (forward direction) with Ray Train and DeepSpeed: "
        "N workers, ZeRO 0-3, eval every K steps, early stopping, checkpoints (--resume continues the latest; "
        "a worker that dies is restarted from it). Writes out/model (best by eval loss, Hugging Face "
        "safetensors), out/metrics.jsonl, out/tensorboard, out/loss.png, out/summary.json.",
        ("sft", "ray"), (PREPARED, OUT, RESUME, OVERWRITE), commands.sft, job=True),
    "rl": Command(
        "refine by RL: discriminator reward + PPO on Ray actors",
        "Refine the fine-tuned model by RL (adversarial imitation, PPO) on plain Ray actors: rollout workers sample "
        "chains of edits, a discriminator (MiniLM) scores them against gold chains, an edit-validity term checks "
        "that each chain applies to its source and gives the written target, a frozen reference keeps the policy "
        "near the SFT model (adaptive KL), and a DeepSpeed learner group runs PPO. Writes out/model (Hugging Face "
        "safetensors), out/metrics.jsonl, out/tensorboard, out/rl.png, out/summary.json and out/checkpoints "
        "(--resume continues the newest; a dead rollout worker is restarted and its prompts redone).",
        ("rl", "ray"),
        (PREPARED, ("--policy", dict(required=True, help="the model/ folder of `secondthought sft`")), OUT, RESUME,
         OVERWRITE),
        commands.rl, job=True),
    "eval": Command(
        "judge + BLEU/ROUGE/perplexity/validity report for each system",
        "Evaluate systems on the prepared test split: 'copy' (the source) and 'reference' (the human target) "
        "always, plus each model given with --models. Trains the alignment judge (MiniLM) on the training triples "
        "the RL stage never uses and reports its held-out accuracy. Writes out/report.json, out/report.md (table "
        "with 95% bootstrap intervals, examples as word diffs), out/metrics.png, out/completions.jsonl.",
        ("eval", "ray"),
        (PREPARED,
         ("--models", dict(type=dict[str, str], required=True,
                           help='system name -> model folder, e.g. \'{"sft": "runs/demo/sft/model", '
                                '"rl": "runs/demo/rl/model"}\'')),
         ("--base", dict(required=True, help="the base LM folder for perplexity (e.g. runs/demo/sft/base)")), OUT),
        commands.evaluate, job=True),
    "transfer": Command(
        "few-shot transfer to another dataset, k in {0, 10, 100}",
        "Few-shot transfer: prepare another dataset (e.g. --data.dataset ethics-deontology --data.input "
        "deontology_train.csv) with the model's tokenizer, fine-tune the model on k of its training triples for each "
        "k in --transfer.shots (0: as it is), and evaluate every adapted model on its test split. Writes "
        "out/k<k>/model, out/eval/report.md and out/transfer.json.",
        ("data", "transfer", "eval", "ray"),
        (("--model", dict(required=True, help="a fine-tuned model folder, e.g. runs/demo/sft/model")),
         ("--base", dict(default=None, help="base LM for perplexity (default: the base the model was trained from)")),
         OUT),
        commands.transfer, job=True),
    "pipeline": Command(
        "the whole pipeline into one run directory",
        "The main job: prepare -> fine-tune (with edits, and the targets-only baseline) -> RL -> evaluate into one "
        "run directory, on the embedded defaults unless told otherwise (the bundled sample, SmolLM2-135M-Instruct, "
        "a local Ray). A finished stage is not redone when the command runs again; an unfinished fine-tuning run "
        "continues from its checkpoint.",
        ("data", "prepare", "sft", "rl", "eval", "ray"),
        (("--out", dict(default="runs/demo", help="run directory")),
         ("--baseline", dict(type=bool, default=True, help="also fine-tune the 'SFT on targets only' baseline (no "
                                                            "chains of edits) and evaluate it")),
         PROGRESS),
        commands.pipeline, job=True),
    "serve": Command(
        "serve a model: realign API, OpenAI-compatible completions, correction page (Ray Serve)",
        "Serve a model folder with Ray Serve on a local Ray (loopback by default): POST /v1/realign (edits, the "
        "result, consistency), POST /v1/edits/apply, GET /v1/models and POST /v1/completions (OpenAI's shapes), the "
        "correction page at / and /docs. Replicas, batching, autoscaling and queue limits come from --app-config "
        "(serve/config.yaml, the same file `serve run` and `serve deploy` take); --model, --host and --port override "
        "it. Runs until Ctrl-C.",
        ("ray",),
        (("--model", dict(required=True, help="model folder to serve, e.g. runs/demo/rl/model")),
         ("--host", dict(default=None, help="address to listen on (default: the config's, 127.0.0.1); a wider "
                                           "one (another interface, or all of them) only if you ask for it here")),
         ("--port", dict(type=int, default=None, help="port (default: the config's, 8000)")),
         ("--app-config", dict(default=None, help="Serve config file (default: serve/config.yaml)")),
         ("--api-key", dict(default=None, help="require this key (Authorization: Bearer KEY) on every route but the "
                                              "page and /healthz (default: the config's args.api_key, else the "
                                              "environment variable SECONDTHOUGHT_API_KEY, else none)"))),
        "serve.deploy:main"),
    "submit": Command(
        "send a stage or the pipeline to a Ray cluster as a job; status, logs, stop, list",
        "Send `secondthought STAGE ARGS...` to a running Ray cluster through the Job Submission API, stream its "
        "logs and exit with its final status (0 SUCCEEDED, 1 FAILED, 3 STOPPED), e.g. `secondthought submit "
        "--address http://HEAD:8265 -- pipeline --config jobs/pipeline.yaml --out /shared/runs/a`. "
        "`secondthought submit status|logs|stop ID` and `secondthought submit list` look after jobs already sent. "
        "The address defaults to RAY_API_SERVER_ADDRESS, then RAY_ADDRESS; a cluster with token authentication "
        "takes Ray's usual RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token). Before sending, it "
        "checks that the stage's config parses, that --out is an absolute path, that the working_dir fits Ray's "
        "upload cap and that the cluster's nodes can hold what the stage asks for; --dry-run prints the job.",
        (),
        (("--address", dict(default=None, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")),
         ("--runtime-env", dict(default=None, help="runtime_env YAML: working_dir (relative to here), excludes, "
                                                 "env_vars (default: the project's jobs/runtime_env.yaml)")),
         ("--submission-id", dict(default=None, help="the job's id (by default Ray makes one up)")),
         ("--entrypoint-num-cpus", dict(type=float, default=None, help="CPUs reserved for the job's driver")),
         ("--entrypoint-num-gpus", dict(type=float, default=None, help="GPUs reserved for the job's driver")),
         ("--no-wait", dict(action="store_true", help="return once the job is sent")),
         ("--dry-run", dict(action="store_true", help="check and print what would be sent; send nothing")),
         ("--skip-resource-check", dict(action="store_true",
                                        help="send even when no node can hold what the stage asks for now "
                                             "(a cluster that adds such nodes on demand)")),
         ("job", dict(nargs="*", help="-- STAGE ARGS... (e.g. -- sft --config jobs/sft.yaml --prepared /shared/p "
                                      "--out /shared/s), or status ID, logs ID, stop ID, list"))),
        "jobs.submit:main"),
    "humaneval": Command(
        "blind rating sheets from an evaluation, and the raters' sheets read back",
        "Human evaluation (the paper's 1-7 ratings). `secondthought humaneval export --report EVAL_DIR --out DIR` "
        "writes DIR/sheet.csv and DIR/form.html (an offline form that saves the filled sheet as NAME.csv): every "
        "test item with the texts of the report's systems, hidden and shuffled per item, to rate 1-7 for alignment "
        "with the norm and for fluency (and with --humaneval.ab A B, which of two systems aligns better), and "
        "DIR/key.json, which option is which system (keep it from the raters). `secondthought humaneval import "
        "--export DIR --sheets a.csv b.csv --out RESULT` reads the filled sheets (a rater per file) and writes each "
        "system's mean ratings with 95% bootstrap intervals, Krippendorff's alpha per question and the A/B "
        "preference to RESULT/humaneval.md and humaneval.json.",
        ("humaneval",),
        (("action", dict(choices=["export", "import"], help="export sheets, or import filled ones")),
         ("--report", dict(default=None, help="export: an evaluation's output directory (e.g. runs/demo/eval)")),
         ("--export", dict(default=None, help="import: the folder export wrote (its key.json)")),
         ("--sheets", dict(nargs="+", default=None, help="import: the raters' filled sheets, one CSV per rater")),
         OUT),
        commands.humaneval),
    "edits": Command(
        "show the chain of edits between two texts",
        "Show the chain of edits from SOURCE to TARGET: as the two edit formats write it (tokens, words) and in "
        "plain English with word numbers.",
        (),
        (("source", dict(help="the unaligned text")), ("target", dict(help="the aligned text")),
         ("--costs", dict(type=tuple[float, float, float], default=(1, 1, 1),
                          help="(insert, delete, replace) cost of one word"))),
        commands.edits),
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="secondthought",
        description="Re-align a language model by teaching it to edit unaligned text into aligned text "
        "(chain-of-edits, fine-tuning, RL). Each stage reads and writes a run directory.",
    )
    subcommands = parser.add_subcommands(dest="command")
    for name, command in COMMANDS.items():
        sub = ArgumentParser(description=command.description, exit_on_error=True)
        if command.sections:
            sub.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
        for section in command.sections:
            sub.add_class_arguments(SECTIONS[section], section, fail_untyped=True, sub_configs=True)
        for flag, options in command.arguments:
            sub.add_argument(flag, **options)
        if "ray" in command.sections:
            sub.add_argument(VERBOSE[0], **VERBOSE[1])
        subcommands.add_subcommand(name, sub, help=command.help)
    return parser


def parse_stage(argv: list[str]) -> tuple[str, Namespace, dict]:
    """``secondthought ARGV`` parsed as the command line would: the command, its arguments and its config
    sections (a bad value raises ConfigError naming its flag)."""
    name, args = _parse(argv)
    return name, args, _sections(name, args)


def _parse(argv: list[str] | None) -> tuple[str, Namespace]:
    cfg = build_parser().parse_args(argv)
    return cfg.command, cfg[cfg.command]


def _sections(name: str, args: Namespace) -> dict:
    """The command's config sections, checked (a bad value raises ConfigError naming its flag)."""
    return {s: SECTIONS[s](**args[s].as_dict()) for s in COMMANDS[name].sections}


def run(argv: list[str] | None = None) -> int:
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the stages show their own progress
    name, args = _parse(argv)
    command = COMMANDS[name]
    if "ray" in command.sections and not args.ray.address:
        loopback_only()  # before anything imports Ray
    log = _new_log(name) if "ray" in command.sections else None
    previous = interrupt_on_sigterm()  # a stopped run still shuts down its Ray
    error, code = None, 0
    try:
        with captured(log, args.verbose) if log else contextlib.nullcontext():
            if log:
                say(f"secondthought {name}: full log in {log}")
            code = command.runner()(args, _sections(name, args)) or 0
    except ConfigError as e:  # also one raised in a Ray task: its cause is the error itself
        error, code = f"secondthought {name}: error: {getattr(e, 'cause', None) or e}", 2
    except KeyboardInterrupt:
        error, code = f"secondthought {name}: interrupted", 130
    except Exception as e:
        cause = getattr(e, "cause", None)
        ray = sys.modules.get("ray")
        if cause is None or ray is None or not isinstance(e, ray.exceptions.RayError):
            if log:
                print(f"secondthought {name}: failed; full log in {_keep(log, args.get('out'), name)}", file=sys.stderr)
            raise
        # the error as raised in the task or actor, with its own last frames, not Ray's wrapping of it
        remote = str(getattr(e, "traceback_str", "")).strip().splitlines()[-12:]
        error, code = "\n".join([*remote, f"secondthought {name}: error in a Ray task: {type(cause).__name__}: {cause}"]), 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if log:
        kept = _keep(log, args.get("out"), name)
        if code == 2 and kept == log:  # refused before any work: its log says nothing more than the error
            kept.unlink()
        elif error:
            error += f"\nfull log: {kept}"
        else:
            say(f"full log: {kept}")
    if error:
        print(error, file=sys.stderr)
    return code


def _new_log(command: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f"secondthought-{command}-", suffix=".log")
    os.close(fd)
    return Path(path)


def _keep(log: Path, out: str | None, command: str) -> Path:
    """The log, moved into the run directory ``out`` when the command made it ours (else left where it is)."""
    if not log.is_file() or not out or not (Path(out) / MARKER).is_file():
        return log
    logs = Path(out) / "logs"
    logs.mkdir(exist_ok=True)
    dest = logs / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    shutil.move(log, dest)
    return dest


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
