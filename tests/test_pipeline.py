import json

from secondthought.config import DataConfig, PrepareConfig, RayConfig, RLConfig, SFTConfig
from secondthought.pipeline import describe, run_pipeline


def test_pipeline_runs_every_stage_once(ray_local, tmp_path, capsys):
    sft = SFTConfig(model="tiny-llama", epochs=1, micro_batch_size=8, lr=3e-3, eval_every=100, log_every=100)
    rl = RLConfig(iterations=2, max_new_tokens=16, discriminator="tiny-bert", log_every=100)
    out = tmp_path / "run"
    summary = run_pipeline(DataConfig(), PrepareConfig(), sft, rl, RayConfig(), out, progress=False)
    assert summary["rows"]["rows_in"] == 204 and summary["rows"]["rows_quarantined"] == 0
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    assert summary["model"] == str(out / "rl" / "model") and (out / "rl" / "model" / "model.safetensors").is_file()
    assert json.loads((out / "pipeline.json").read_text())["model"] == summary["model"]
    text = describe(summary)
    assert summary["model"] in text and "loss.png" in text and "rl.png" in text

    capsys.readouterr()
    again = run_pipeline(DataConfig(), PrepareConfig(), sft, rl, RayConfig(), out, progress=False)
    said = capsys.readouterr().out
    assert "prepare: done before" in said and "sft: done before" in said and "rl: done before" in said
    assert again["model"] == summary["model"]
