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
from typing import Callable

from secondthought.config import DataConfig, EvalConfig, PrepareConfig, RayConfig, RLConfig, SFTConfig
from secondthought.runtime import ray_session

SUMMARY = "pipeline.json"


def run_once(name: str, folder: Path, summary_file: str, doing: str, run: Callable[[bool], object]) -> dict:
    """Run a stage unless its summary file says it finished; ``run(unfinished)`` continues a started one."""
    if (folder / summary_file).is_file():
        print(f"[secondthought] {name}: done before, using {folder}", flush=True)
    else:
        unfinished = folder.is_dir() and any(folder.iterdir())
        print(f"[secondthought] {name}: {'continuing' if unfinished else doing}", flush=True)
        run(unfinished)
    return json.loads((folder / summary_file).read_text())


def run_pipeline(data: DataConfig, prepare: PrepareConfig, sft: SFTConfig, rl: RLConfig, evaluation: EvalConfig,
                 ray_cfg: RayConfig, out: str | Path, progress: bool = True, baseline: bool = True) -> dict:
    from secondthought.evaluate import run_eval
    from secondthought.prepare import MANIFEST, run_prepare
    from secondthought.rl.loop import SUMMARY as RL_SUMMARY
    from secondthought.rl.loop import run_rl
    from secondthought.sft import SUMMARY as SFT_SUMMARY
    from secondthought.sft import run_sft

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {"data": asdict(data), "prepare": asdict(prepare), "sft": asdict(sft), "rl": asdict(rl),
         "eval": asdict(evaluation), "ray": asdict(ray_cfg), "baseline": baseline}, indent=2))
    stages: dict[str, dict] = {}
    started = time.time()
    with ray_session(ray_cfg):  # one Ray for every stage
        prepared, tuned, refined, judged = out / "prepared", out / "sft", out / "rl", out / "eval"
        targets_only = out / "sft-targets"
        stages["prepare"] = run_once("prepare", prepared, MANIFEST, "chains of edits and token ids",
                                  lambda _: run_prepare(data, prepare, ray_cfg, prepared, overwrite=True,
                                                        progress=progress))
        stages["sft"] = run_once("sft", tuned, SFT_SUMMARY, f"fine-tuning {sft.model}",
                              lambda unfinished: run_sft(prepared, sft, ray_cfg, tuned, resume=unfinished))
        if baseline:
            stages["sft-targets"] = run_once(
                "sft-targets", targets_only, SFT_SUMMARY, "fine-tuning the baseline on targets only (no edits)",
                lambda unfinished: run_sft(prepared, replace(sft, chains=False), ray_cfg, targets_only,
                                           resume=unfinished))
        stages["rl"] = run_once("rl", refined, RL_SUMMARY, f"refining the fine-tuned model ({rl.iterations} iterations)",
                             lambda unfinished: run_rl(prepared, stages["sft"]["model"], rl, ray_cfg, refined,
                                                       resume=unfinished))
        systems = {"sft-targets-only": stages["sft-targets"]["model"]} if baseline else {}
        systems |= {"sft-edits": stages["sft"]["model"], "sft-rl": stages["rl"]["model"]}
        stages["eval"] = run_once("eval", judged, "report.json", f"judging {', '.join(systems)} against copy and reference",
                               lambda _: run_eval(prepared, systems, tuned / "base", evaluation, ray_cfg, judged))

    summary = {
        "run_dir": str(out),
        "seconds": round(time.time() - started, 1),
        "rows": {k: stages["prepare"][k] for k in ("rows_in", "rows_out", "rows_quarantined", "chains_out")},
        "sft_model": stages["sft"]["model"],
        "best_eval_loss": stages["sft"]["best_eval_loss"],
        "model": stages["rl"]["model"],
        "rl_score": [stages["rl"]["first_score"], stages["rl"]["last_score"]],
        "plots": [stages["sft"]["loss_plot"], stages["rl"]["plot"], str(judged / "metrics.png")],
        "report": str(judged / "report.md"),
        "judge_accuracy": stages["eval"]["judge"]["held_out_accuracy"],
        "results": {s["system"]: {k: s["metrics"][k][0] for k in ("alignment", "bleu")} for s in stages["eval"]["systems"]},
        "quarantine": str(prepared / "quarantine.jsonl"),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def describe(summary: dict) -> str:
    rows = summary["rows"]
    return "\n".join([
        f"SecondThought run finished in {summary['seconds']:.0f}s: {summary['run_dir']}",
        f"  data:   {rows['rows_out']} of {rows['rows_in']} rows used ({rows['rows_quarantined']} quarantined, "
        f"see {summary['quarantine']}), {rows['chains_out']} chains of edits",
        f"  sft:    {summary['sft_model']} (best eval loss {summary['best_eval_loss']:.4f})",
        f"  rl:     {summary['model']} (reward {summary['rl_score'][0]:.3f} -> {summary['rl_score'][1]:.3f})",
        f"  report: {summary['report']} (judge held-out accuracy {summary['judge_accuracy']:.3f})",
        *(f"          {name:17s} alignment {r['alignment']:.3f}  BLEU {r['bleu']:.1f}" for name, r in summary["results"].items()),
        f"  plots:  {', '.join(summary['plots'])}",
    ])
