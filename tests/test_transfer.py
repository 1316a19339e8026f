"""Few-shot transfer end to end: a tiny model adapted with k examples of a dataset, evaluated there."""

import json

import pytest

from secondthought.config import DataConfig, EvalConfig, RayConfig, TransferConfig
from secondthought.models.lm import resolve_precision
from secondthought.transfer import run_transfer
from tests.conftest import shared_file


@pytest.mark.parametrize("dataset", ["sample", pytest.param("ethics-deontology", marks=pytest.mark.slow)])
def test_transfer_adapts_with_k_examples_and_evaluates_each(dataset, ray_local, tokenizer, tmp_path, capsys):
    from secondthought.models.lm import build_base_model

    model = build_base_model("tiny-llama", tokenizer, tmp_path / "ms" / "model")
    if dataset == "sample":
        data, rows = DataConfig(), 200
    else:
        data, rows = DataConfig(dataset=dataset, input=[str(shared_file("ethics", "deontology",
                                                                        "deontology_train.csv"))]), 1000
    cfg = TransferConfig(shots=[0, 8], epochs=2, lr=3e-3, max_eval_rows=8)
    evaluation = EvalConfig(judge="tiny-bert", max_rows=16, max_new_tokens=12, bootstrap=50)
    out = tmp_path / "transfer"
    result = run_transfer(model, data, cfg, evaluation, RayConfig(), out)
    assert set(result["results"]) == {"copy", "reference", "k=0", "k=8", "k=0 (constrained)", "k=8 (constrained)"}
    assert result["dataset"] == dataset and result["rows"] > rows
    summary = json.loads((out / "k8" / "summary.json").read_text())
    assert summary["train_chains"] == 8 and summary["steps"] == 2 * 8 // 4
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["test_rows"] == 16 and report["models"]["k=0"] == str(model.resolve())
    # "auto": bf16 where this machine has fast bf16 kernels; the adaptation ran in it, on one unpartitioned worker
    precision = resolve_precision("auto")
    assert result["precision"] == {"adaptation": precision, "evaluation": precision}
    adapted = json.loads((out / "k8" / "config.json").read_text())
    assert (adapted["precision"], adapted["zero_stage"]) == (precision, 0) and report["precision"] == precision

    capsys.readouterr()
    again = run_transfer(model, data, cfg, evaluation, RayConfig(), out)
    said = capsys.readouterr().out
    assert "k=8: done before" in said and "eval: done before" in said and again == result
