"""``secondthought pipeline``: every stage into one run directory, each stage done once.

run_dir/prepared (Ray Data) -> run_dir/sft (Ray Train + DeepSpeed). A finished stage is skipped
when the pipeline runs again; an unfinished fine-tuning run continues from its latest checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from secondthought.config import DataConfig, PrepareConfig, RayConfig, SFTConfig
from secondthought.runtime import ray_session

SUMMARY = "pipeline.json"


def run_pipeline(data: DataConfig, prepare: PrepareConfig, sft: SFTConfig, ray_cfg: RayConfig,
                 out: str | Path, progress: bool = True) -> dict:
    from secondthought.prepare import is_prepared, run_prepare
    from secondthought.sft import SUMMARY as SFT_SUMMARY
    from secondthought.sft import run_sft

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {"data": asdict(data), "prepare": asdict(prepare), "sft": asdict(sft), "ray": asdict(ray_cfg)}, indent=2))
    stages: dict[str, dict] = {}
    started = time.time()
    with ray_session(ray_cfg):  # one Ray for every stage
        prepared = out / "prepared"
        if is_prepared(prepared):
            print(f"[pipeline] prepare: done before, using {prepared}", flush=True)
        else:
            print("[pipeline] prepare: chains of edits and token ids", flush=True)
            run_prepare(data, prepare, ray_cfg, prepared, overwrite=True, progress=progress)
        stages["prepare"] = json.loads((prepared / "manifest.json").read_text())

        tuned = out / "sft"
        if (tuned / SFT_SUMMARY).is_file():
            print(f"[pipeline] sft: done before, using {tuned}", flush=True)
        else:
            unfinished = tuned.is_dir() and any(tuned.iterdir())
            print(f"[pipeline] sft: {'continuing' if unfinished else 'fine-tuning'} {sft.model}", flush=True)
            run_sft(prepared, sft, ray_cfg, tuned, resume=unfinished)
        stages["sft"] = json.loads((tuned / SFT_SUMMARY).read_text())

    summary = {
        "run_dir": str(out),
        "seconds": round(time.time() - started, 1),
        "rows": {k: stages["prepare"][k] for k in ("rows_in", "rows_out", "rows_quarantined", "chains_out")},
        "model": stages["sft"]["model"],
        "best_eval_loss": stages["sft"]["best_eval_loss"],
        "plots": [stages["sft"]["loss_plot"]],
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
        f"  model:  {summary['model']} (best eval loss {summary['best_eval_loss']:.4f})",
        f"  plots:  {', '.join(summary['plots'])}",
    ])
