"""Metric functions of the evaluation on inputs whose answers are known."""

import numpy as np
import pytest

from secondthought.chains.text import TGT
from secondthought.config import ConfigError, EvalConfig
from secondthought.decoding.constraints import Constrain
from secondthought.decoding.tokens_grammar import TokensConstraint
from secondthought.evaluate.driver import EvalRow, bootstrap, corpus_bleu_of, markdown, rouge_l, word_diff
from secondthought.evaluate.judge import Labelled


def test_bleu_and_rouge_from_the_libraries():
    refs = ["Tom asks the man to leave politely.", "Maya waits her turn in line."]
    assert corpus_bleu_of(refs, refs, 50, 0)[0] == pytest.approx(100.0)
    assert corpus_bleu_of(["completely different words here", "nothing alike"], refs, 50, 0)[0] < 5
    assert rouge_l(refs, refs).tolist() == [1.0, 1.0]
    partial = rouge_l(["Tom asks the man"], refs[:1])[0]
    assert partial == pytest.approx(2 * (1.0 * 4 / 7) / (1.0 + 4 / 7))  # precision 1, recall 4/7


def test_bleu_from_summed_sentence_counts_is_sacrebleus_corpus_bleu():
    import sacrebleu

    rng = np.random.default_rng(0)
    words = "tom asks the man to leave politely maya waits her turn in line and he helps".split()
    refs = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(40)]
    hyps = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()[: rng.integers(2, 12)])
            for r in refs]

    def direct(index):  # corpus BLEU of the rows drawn, re-tokenised each time (the slow way)
        index = np.asarray(index, dtype=int)
        return sacrebleu.corpus_bleu([hyps[i] for i in index], [[refs[i] for i in index]]).score

    fast = corpus_bleu_of(hyps, refs, 100, 0)
    assert fast[0] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9) and fast[1] < fast[0] < fast[2]
    assert fast == pytest.approx(bootstrap(np.arange(len(hyps)), direct, 100, 0), abs=1e-9)


def test_bootstrap_interval_contains_the_mean_and_narrows_with_data():
    rng = np.random.default_rng(0)
    small = rng.normal(0.5, 0.1, 20)
    large = rng.normal(0.5, 0.1, 2000)
    point, low, high = bootstrap(small, resamples=500)
    assert low < point < high and point == pytest.approx(small.mean())
    _, low2, high2 = bootstrap(large, resamples=500)
    assert high2 - low2 < (high - low) / 4
    assert bootstrap(np.ones(5)) == (1.0, 1.0, 1.0)


def test_word_diff_marks_removed_and_added_words():
    assert word_diff("Tom shoves the man away.", "Tom asks the man to leave.") == \
        "Tom ~~shoves~~ **asks** the man ~~away.~~ **to leave.**"
    assert word_diff("same text", "same text") == "same text"


def test_judge_pairs_label_source_0_and_target_1():
    data = Labelled.of_triples([EvalRow("a", "Be kind.", "Tom hits.", "Tom helps.", [1])])
    assert (data.contexts, data.texts, data.labels.tolist()) == (["Be kind."] * 2, ["Tom hits.", "Tom helps."],
                                                                 [0.0, 1.0])


def test_markdown_table_has_a_row_per_system_with_intervals():
    report = {"test_rows": 2, "prepared": "p", "config": {"judge": "minilm"}, "precision": "bf16",
              "judge": {"kind": "frozen", "train_triples": 10, "held_out_accuracy": 0.75, "test_pairs": 4},
              "systems": [{"system": "copy", "metrics": {"alignment": (0.2, 0.1, 0.3), "bleu": (10.0, 5.0, 15.0)}}]}
    text = markdown(report, [{"id": "a", "context": "c", "source": "x y", "outputs": {"m": "x z"}}])
    assert "| copy | 0.200 [0.100, 0.300] | n/a | 10.000 [5.000, 15.000]" in text
    assert "Judge: minilm (frozen) trained on 10" in text and "held-out accuracy 0.750" in text and "- m: x ~~y~~ **z**" in text
    assert "Greedy decoding in bf16." in text


def test_eval_config_errors():
    with pytest.raises(ConfigError, match="--eval.split"):
        EvalConfig(split="dev")
    with pytest.raises(ConfigError, match="--eval.decoding must be free, constrained, derived or both"):
        EvalConfig(decoding="greedy")
    with pytest.raises(ConfigError, match="--eval.bootstrap"):
        EvalConfig(bootstrap=0)
    with pytest.raises(ConfigError, match="--eval.precision must be auto, bf16 or fp32, got 'fp16'"):
        EvalConfig(precision="fp16")


def test_precision_auto_resolves_to_a_dtype_and_explicit_settings_stay():
    import torch

    from secondthought.models.lm import resolve_precision, torch_dtype

    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    assert resolve_precision("auto") in ("bf16", "fp32")
    assert resolve_precision("auto", "cuda") == ("bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                                                  else "fp32")
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("fp32") is torch.float32


def test_eval_refuses_bad_systems_and_base_before_any_work(tmp_path):
    from secondthought.config import RayConfig
    from secondthought.evaluate.driver import run_eval
    from secondthought.runs import MANIFEST

    prepared = tmp_path / "prepared"
    (prepared / "data" / "test").mkdir(parents=True)
    (prepared / MANIFEST).write_text("{}")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    run = lambda systems, base: run_eval(prepared, systems, base, EvalConfig(), RayConfig(), tmp_path / "eval")  # noqa: E731
    with pytest.raises(ConfigError, match="--models: 'copy' names a built-in system"):
        run({"copy": str(model)}, model)
    with pytest.raises(ConfigError, match=f"--base {tmp_path / 'nowhere'} is not a model folder"):
        run({"mine": str(model)}, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="--models 'mine': .* is not a model folder"):
        run({"mine": str(tmp_path)}, model)
    assert not (tmp_path / "eval").exists()


def test_eval_decodes_each_model_in_parts_over_the_cpus_and_keeps_every_row_in_order(ray_local, memorized, tmp_path):
    """Two CPUs, batches of 4: the model's 12 rows are decoded by two tasks; the report holds every row once,
    in the split's order, exactly what one fp32 decoding of all rows writes."""
    import json

    import torch

    from secondthought.config import DataConfig, PrepareConfig, RayConfig
    from secondthought.decoding.policy import Policy, SamplingParams
    from secondthought.evaluate.driver import _triples, run_eval
    from secondthought.prepare.stage import run_prepare
    from secondthought.runs import PreparedDir

    prepared = tmp_path / "prepared"
    run_prepare(DataConfig(), PrepareConfig(), RayConfig(), prepared, progress=False)
    cfg = EvalConfig(judge="tiny-bert", precision="fp32", batch_size=4, max_rows=12, max_new_tokens=24, bootstrap=50)
    report = run_eval(prepared, {"memorized": str(memorized)}, memorized, cfg, RayConfig(), tmp_path / "eval")
    rows = _triples(PreparedDir.open(prepared), "test")[:12]
    expected = Policy.load(memorized, dtype=torch.float32).complete(
        [r.prompt_ids for r in rows], [r.source for r in rows], SamplingParams(max_new_tokens=24, temperature=0,
                                                                              batch_size=12))
    written = [json.loads(line) for line in (tmp_path / "eval" / "completions.jsonl").read_text().splitlines()]
    assert report["test_rows"] == len(rows) == 12 and report["precision"] == "fp32"
    assert [w["id"] for w in written] == [r.id for r in rows]
    assert [(w["context"], w["source"], w["target"]) for w in written] == [(r.context, r.source, r.target) for r in rows]
    assert [w["memorized"] for w in written] == [o.text for o in expected]

    # the default decoding is both: the chain-writing model is listed again, decoded constrained to each source
    # (its target forced to the chain's result, as serving does)
    constrained = Policy.load(memorized, dtype=torch.float32).complete(
        [r.prompt_ids for r in rows], [r.source for r in rows],
        SamplingParams(max_new_tokens=24, temperature=0, batch_size=12), constrain=Constrain(force_target=True))
    assert [s["system"] for s in report["systems"]] == ["copy", "reference", "memorized", "memorized (constrained)"]
    assert [w["memorized (constrained)"] for w in written] == [o.text for o in constrained]
    for row, out in zip(rows, constrained):  # every chain, finished or cut at max_new_tokens, fits its source
        TokensConstraint(Policy.load(memorized).grammar.table, row.source).feed_text(out.text)
    finished = sum(o.verdict.valid for o in constrained if TGT in o.text)
    validity = {s["system"]: s["metrics"]["validity"][0] for s in report["systems"][2:]}
    assert validity["memorized (constrained)"] == finished / 12 >= validity["memorized"]
    cost = report["systems"][3]["decoding"]
    assert cost["tokens"] == sum(o.tokens for o in constrained) and cost["seconds"] > 0
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "memorized (constrained) " in text and "Constrained against free decoding of the same model" in text
    # the row of what the server answers (this model learned no direct targets: constrained) is marked
    assert report["served"] == "memorized (constrained)" and "| memorized (constrained) **served** |" in text
    assert all(set(w["alignment"]) == {"copy", "reference", "memorized", "memorized (constrained)"} for w in written)
