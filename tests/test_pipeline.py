import json

import pyarrow.dataset as pads
import pytest

from secondthought.config import DataConfig, EvalConfig, PrepareConfig, RayConfig, RLConfig, SFTConfig
from secondthought.pipeline import describe, run_pipeline
from secondthought.runs import read_model_info


def test_pipeline_runs_every_stage_once(ray_local, tmp_path, capsys):
    sft = SFTConfig(model="tiny-llama", epochs=1, micro_batch_size=8, lr=3e-3, eval_every=100, log_every=100)
    rl = RLConfig(iterations=2, max_new_tokens=16, discriminator="tiny-bert", log_every=100)
    evaluation = EvalConfig(judge="tiny-bert", max_new_tokens=16, bootstrap=100)
    out = tmp_path / "run"
    summary = run_pipeline(DataConfig(), PrepareConfig(), sft, rl, evaluation, RayConfig(), out, progress=False)
    assert summary["rows"]["rows_in"] == 204 and summary["rows"]["rows_quarantined"] == 0
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    assert summary["model"] == str(out / "rl" / "model") and (out / "rl" / "model" / "model.safetensors").is_file()
    assert json.loads((out / "pipeline.json").read_text())["model"] == summary["model"]
    text = describe(summary)
    assert summary["model"] in text and "loss.png" in text and "rl.png" in text and "report.md" in text
    assert "chains in words" in text  # the default edit format

    report = json.loads((out / "eval" / "report.json").read_text())
    assert [s["system"] for s in report["systems"]] == [
        "copy", "reference", "sft-targets-only", "sft-edits", "sft-edits (constrained)", "sft-edits (derived)",
        "sft-rl", "sft-rl (constrained)", "sft-rl (derived)"]
    # what the server answers with the run's model is its own row, marked in the report and the summary
    assert report["served"] == summary["served"] == "sft-rl (derived)"
    assert "| sft-rl (derived) **served** |" in (out / "eval" / "report.md").read_text()
    assert "sft-rl (derived)" in text and "<- what `secondthought serve` answers" in text
    # the targets-only baseline trains once on each training triple, the edits model on each distinct chain
    rows = pads.dataset(out / "prepared" / "data" / "train").to_table(columns=["id", "direction"]).to_pylist()
    forward = [r["id"] for r in rows if r["direction"] == "forward"]
    targets_only = json.loads((out / "sft-targets" / "summary.json").read_text())
    assert targets_only["train_chains"] == len(set(forward)) < len(forward)
    assert json.loads((out / "sft" / "summary.json").read_text())["train_chains"] == len(forward)
    # each model folder says what it writes and where its base is: evaluation reads that, not the run around it
    infos = {name: read_model_info(out / name / "model") for name in ("sft", "sft-targets", "rl")}
    assert infos["sft"].writes_chains and not infos["sft-targets"].writes_chains and infos["rl"].writes_chains
    assert infos["rl"].stage == "rl" and infos["rl"].trained_from == str(out / "sft" / "model")
    assert infos["rl"].direct_targets == infos["sft"].direct_targets == sft.direct_targets > 0
    assert infos["sft-targets"].direct_targets == 0
    assert infos["rl"].base_folder == infos["sft"].base_folder == str(out / "sft" / "base")
    assert report["test_rows"] == len((out / "eval" / "completions.jsonl").read_text().splitlines()) > 0
    assert 0 <= report["judge"]["held_out_accuracy"] <= 1
    by_name = {s["system"]: s["metrics"] for s in report["systems"]}
    assert by_name["reference"]["bleu"][0] == pytest.approx(100.0) and by_name["reference"]["rouge_l"][0] == 1.0
    assert "validity" not in by_name["copy"] and "validity" not in by_name["sft-targets-only"]  # no chains
    for name in ("sft-edits", "sft-rl"):
        assert 0 <= by_name[name]["validity"][0] <= 1 and 0 <= by_name[name]["consistency"][0] <= 1
        low, high = by_name[name]["alignment"][1:]
        assert low <= by_name[name]["alignment"][0] <= high
    assert "| sft-rl |" in (out / "eval" / "report.md").read_text()
    assert (out / "eval" / "metrics.png").stat().st_size > 10_000

    capsys.readouterr()
    again = run_pipeline(DataConfig(), PrepareConfig(), sft, rl, evaluation, RayConfig(), out, progress=False)
    said = capsys.readouterr().out
    assert all(f"{stage}: done before" in said for stage in ("prepare", "sft", "sft-targets", "rl", "eval"))
    assert again["model"] == summary["model"]
