"""``secondthought transfer``: few-shot transfer of a fine-tuned model to another dataset.

The target dataset (e.g. an ETHICS subset) is prepared with the model's tokenizer and edit format; for each k in
``--transfer.shots`` the model is fine-tuned on the first k training triples (k = 0: not at all);
every adapted model is then evaluated on the target dataset's test split (``secondthought eval``).
A finished step is not redone when the command runs again.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from secondthought.config import DataConfig, EvalConfig, PrepareConfig, RayConfig, SFTConfig, TransferConfig
from secondthought.models.lm import resolve_precision
from secondthought.runs import (
    CONFIG,
    TRANSFER,
    PreparedDir,
    ReportDir,
    TrainingDir,
    base_of,
    claim,
    model_folder,
    read_model_info,
    resolve_out,
    run_once,
    write_json,
)
from secondthought.runtime import ray_session


def run_transfer(model: str | Path, data: DataConfig, cfg: TransferConfig, evaluation: EvalConfig,
                 ray_cfg: RayConfig, out: str | Path, base: str | Path | None = None) -> dict:
    from secondthought.evaluate.driver import points, run_eval
    from secondthought.prepare.stage import run_prepare
    from secondthought.sft.driver import run_sft

    model, out = model_folder(model, "--model"), resolve_out(out)
    base = Path(base) if base else base_of(model)
    claim(out, "transfer", done_file=TRANSFER)
    (out / CONFIG).write_text(json.dumps({"model": str(model), "data": asdict(data), "transfer": asdict(cfg),
                                          "eval": asdict(evaluation)}, indent=2))
    prepared, report_dir = PreparedDir(out / "prepared"), ReportDir(out / "eval")
    precision = resolve_precision(cfg.precision)
    with ray_session(ray_cfg, shared=out):
        manifest = run_once("prepare", prepared.manifest_file,
                            f"{data.dataset} with the model's tokenizer and edit format",
                            lambda _: run_prepare(data, PrepareConfig(cost_sets=[(1, 1, 1)], reverse=False,
                                                                      tokenizer=str(model),
                                                                      edit_format=read_model_info(model).edit_format),
                                                  ray_cfg, prepared.path, overwrite=True, progress=False))
        systems = {}
        for k in sorted(set(cfg.shots)):
            if k == 0:
                systems["k=0"] = str(model)
                continue
            # one worker: ZeRO has nothing to partition, and stage 0 steps about 1.5x faster on a CPU
            # direct targets at the share the model learned them (none for a model from elsewhere)
            sft = SFTConfig(model=str(model), max_train_rows=k, epochs=cfg.epochs, num_workers=1, zero_stage=0,
                            direct_targets=read_model_info(model).direct_targets,
                            precision=precision, micro_batch_size=min(cfg.micro_batch_size, k), lr=cfg.lr,
                            warmup_fraction=0.0, eval_every=10**9, patience=0, max_eval_rows=cfg.max_eval_rows,
                            log_every=10)
            folder = TrainingDir(out / f"k{k}")
            summary = run_once(f"k={k}", folder.summary_file, f"adapting with {k} examples",
                               lambda unfinished, sft=sft, folder=folder: run_sft(prepared.path, sft, ray_cfg,
                                                                                   folder.path, resume=unfinished))
            systems[f"k={k}"] = summary["model"]
        report = run_once("eval", report_dir.report_file, f"evaluating {', '.join(systems)}",
                          lambda _: run_eval(prepared.path, systems, base, evaluation, ray_cfg, report_dir.path))
    result = {"dataset": data.dataset, "rows": manifest["rows_out"], "report": str(report_dir.markdown),
              "precision": {"adaptation": precision, "evaluation": report["precision"]},
              "judge_accuracy": report["judge"]["held_out_accuracy"],
              "results": points(report, ("alignment", "bleu", "rouge_l", "validity"))}
    write_json(out / TRANSFER, result)
    return result
