"""``secondthought pipeline``: every stage into one run directory, each stage done once.

run_dir/prepared (Ray Data) -> run_dir/sft (Ray Train + DeepSpeed; run_dir/sft-targets, the
baseline without edits) -> run_dir/rl (Ray actors, PPO) -> run_dir/eval (judge, metrics, report).
A finished stage is skipped when the pipeline runs again; an unfinished fine-tuning or RL run
continues from its latest checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from secondthought.config import ConfigError, DataConfig, EvalConfig, PrepareConfig, RayConfig, RLConfig, SFTConfig
from secondthought.runs import (
    CONFIG,
    PIPELINE,
    PreparedDir,
    ReportDir,
    TrainingDir,
    claim,
    resolve_out,
    run_once,
    write_json,
)
from secondthought.runtime import ray_session


def run_pipeline(data: DataConfig, prepare: PrepareConfig, sft: SFTConfig, rl: RLConfig, evaluation: EvalConfig,
                 ray_cfg: RayConfig, out: str | Path, progress: bool = True, baseline: bool = True) -> dict:
    from secondthought.evaluate.driver import points, run_eval
    from secondthought.prepare.stage import run_prepare
    from secondthought.rl.driver import run_rl
    from secondthought.sft.driver import run_sft

    out = resolve_out(out)
    config = json.loads(json.dumps({"data": asdict(data), "prepare": asdict(prepare), "sft": asdict(sft),
                                    "rl": asdict(rl), "eval": asdict(evaluation), "baseline": baseline}))
    if (out / CONFIG).is_file():
        refuse_changed(json.loads((out / CONFIG).read_text()), config, out)
    claim(out, "pipeline", done_file=PIPELINE)
    (out / CONFIG).write_text(json.dumps(config, indent=2))
    prepared, tuned, refined = PreparedDir(out / "prepared"), TrainingDir(out / "sft"), TrainingDir(out / "rl")
    targets_only, judged = TrainingDir(out / "sft-targets"), ReportDir(out / "eval")
    stages: dict[str, dict] = {}
    started = time.time()
    with ray_session(ray_cfg, shared=out):  # one Ray for every stage
        stages["prepare"] = run_once("prepare", prepared.manifest_file, "chains of edits and token ids",
                                     lambda _: run_prepare(data, prepare, ray_cfg, prepared.path, overwrite=True,
                                                           progress=progress))
        stages["sft"] = run_once("sft", tuned.summary_file, f"fine-tuning {sft.model}",
                                 lambda unfinished: run_sft(prepared.path, sft, ray_cfg, tuned.path, resume=unfinished))
        if baseline:
            stages["sft-targets"] = run_once(
                "sft-targets", targets_only.summary_file, "fine-tuning the baseline on targets only (no edits)",
                lambda unfinished: run_sft(prepared.path, replace(sft, chains=False), ray_cfg, targets_only.path,
                                           resume=unfinished))
        stages["rl"] = run_once("rl", refined.summary_file, f"refining the fine-tuned model ({rl.iterations} iterations)",
                                lambda unfinished: run_rl(prepared.path, stages["sft"]["model"], rl, ray_cfg,
                                                          refined.path, resume=unfinished))
        systems = {"sft-targets-only": stages["sft-targets"]["model"]} if baseline else {}
        systems |= {"sft-edits": stages["sft"]["model"], "sft-rl": stages["rl"]["model"]}
        stages["eval"] = run_once("eval", judged.report_file,
                                  f"judging {', '.join(systems)} against copy and reference",
                                  lambda _: run_eval(prepared.path, systems, tuned.base, evaluation, ray_cfg,
                                                     judged.path))

    summary = {
        "run_dir": str(out),
        "seconds": round(time.time() - started, 1),
        "rows": {k: stages["prepare"][k] for k in ("rows_in", "rows_out", "rows_quarantined", "chains_out")},
        "sft_model": stages["sft"]["model"],
        "edit_format": prepared.edit_format,
        "best_eval_loss": stages["sft"]["best_eval_loss"],
        "model": stages["rl"]["model"],
        "rl_score": [stages["rl"]["first_score"], stages["rl"]["last_score"]],
        "plots": [stages["sft"]["loss_plot"], stages["rl"]["plot"], str(judged.plot)],
        "report": str(judged.markdown),
        "judge_accuracy": stages["eval"]["judge"]["held_out_accuracy"],
        "results": points(stages["eval"], ("alignment", "bleu", "validity")),
        "served": stages["eval"].get("served", ""),
        "quarantine": str(prepared.quarantine),
    }
    write_json(out / PIPELINE, summary)
    return summary


def refuse_changed(before: dict, now: dict, out: Path) -> None:
    """A run directory continues the run it holds: its finished stages are not redone, so options that
    differ from the ones they ran with would be silently ignored. Where to run (--ray) may change."""
    changed = [f"--{section}.{key} {before.get(section, {}).get(key)!r} -> {value!r}"
               for section, values in now.items() if isinstance(values, dict)
               for key, value in values.items()
               if key in before.get(section, {}) and before[section][key] != value]  # new options: no record
    if before.get("baseline", now["baseline"]) != now["baseline"]:
        changed.append(f"--baseline {before['baseline']} -> {now['baseline']}")
    if changed:
        raise ConfigError(f"{out} holds a run made with other options ({'; '.join(changed)}): its finished stages "
                          "would not be redone with them. Use a new --out, or the same options to continue it")


def describe(summary: dict) -> str:
    rows = summary["rows"]
    width = max(map(len, summary["results"]), default=0)
    return "\n".join([
        f"SecondThought run finished in {summary['seconds']:.0f}s: {summary['run_dir']}",
        f"  data:   {rows['rows_out']} of {rows['rows_in']} rows used ({rows['rows_quarantined']} quarantined, "
        f"see {summary['quarantine']}), {rows['chains_out']} chains of edits",
        f"  sft:    {summary['sft_model']} (chains in {summary['edit_format']}, best eval loss "
        f"{summary['best_eval_loss']:.4f})",
        f"  rl:     {summary['model']} (reward {summary['rl_score'][0]:.3f} -> {summary['rl_score'][1]:.3f})",
        f"  report: {summary['report']} (judge held-out accuracy {summary['judge_accuracy']:.3f})",
        *(f"          {name:{width}s} alignment {r['alignment']:.3f}  BLEU {r['bleu']:.1f}"
          + (f"  validity {r['validity']:.2f}" if r.get("validity") is not None else "")
          + ("  <- what `secondthought serve` answers" if name == summary.get("served") else "")
          for name, r in summary["results"].items()),
        f"  plots:  {', '.join(summary['plots'])}",
    ])
