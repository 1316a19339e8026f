"""The evaluation judges: they learn, they are saved and loaded as safetensors, and they are reused."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from secondthought.evaluate.judge import HEAD, Judge, JudgeSpec, Labelled, cached, train
from tests.conftest import shared_file


def moral_stories(n: int) -> list:
    rows = [json.loads(line) for line in shared_file("moral_stories", "dev.jsonl").read_text().splitlines()[:n]]
    return [SimpleNamespace(context=" ".join((r["norm"], r["situation"], r["intention"])),
                            source=r["immoral_action"], target=r["moral_action"]) for r in rows]


def test_frozen_minilm_judge_tells_aligned_from_unaligned_actions_on_unseen_stories(tmp_path):
    stories = moral_stories(600)
    info = train(JudgeSpec(kind="frozen"), Labelled.of_triples(stories[:400]), tmp_path / "judge", progress=False)
    assert sorted(p.name for p in (tmp_path / "judge").iterdir()) == [HEAD, "judge.json"]
    test = Labelled.of_triples(stories[400:])
    p = Judge(tmp_path / "judge").probabilities(test.contexts, test.texts)
    accuracy = np.mean((p > 0.5) == (test.labels == 1))
    # chance is 0.5 and its standard error here 0.025; the frozen judge scores about 0.65 on Moral Stories
    assert info["train_pairs"] == 800 and accuracy > 0.58, accuracy
    # the same text scores the same whatever else is in the batch (each unique text embedded once)
    alone = Judge(tmp_path / "judge").probabilities(test.contexts[:2], test.texts[:2])
    assert alone == pytest.approx(p[:2], abs=1e-5)


def test_finetuned_judge_lowers_its_loss_and_reloads(tmp_path):
    stories = moral_stories(16)
    spec = JudgeSpec(kind="finetune", encoder="tiny-bert", epochs=8, lr=1e-3, batch_size=8)
    info = train(spec, Labelled.of_triples(stories), tmp_path / "judge", progress=False)
    assert info["last_loss"] < info["first_loss"]
    assert (tmp_path / "judge" / "model.safetensors").is_file()
    data = Labelled.of_triples(stories[:4])
    p = Judge(tmp_path / "judge").probabilities(data.contexts, data.texts)
    assert p.shape == (8,) and np.all((p > 0) & (p < 1))


def test_a_judge_is_trained_once_per_data_and_settings(tmp_path):
    data = Labelled.of_triples(moral_stories(6))
    spec = JudgeSpec(kind="frozen", encoder="tiny-bert")
    first, reused = cached(spec, "data-a", tmp_path, lambda: data, progress=False)
    assert not reused
    trained_at = (first / "judge.json").stat().st_mtime_ns
    again, reused = cached(spec, "data-a", tmp_path, lambda: data, progress=False)
    assert reused and again == first and (first / "judge.json").stat().st_mtime_ns == trained_at
    other_data, reused_a = cached(spec, "data-b", tmp_path, lambda: data, progress=False)
    other_cap, reused_b = cached(JudgeSpec(kind="frozen", encoder="tiny-bert", max_train_rows=4), "data-a",
                                 tmp_path, lambda: data, progress=False)
    assert not reused_a and not reused_b and len({first, other_data, other_cap}) == 3
    # settings that only the fine-tuned judge uses do not make a frozen judge new
    assert JudgeSpec(kind="frozen", lr=1.0).key("d") == JudgeSpec(kind="frozen").key("d")
    assert JudgeSpec(kind="finetune", lr=1.0).key("d") != JudgeSpec(kind="finetune").key("d")
    assert not list(tmp_path.glob(".*")), "no scratch folder left behind"
