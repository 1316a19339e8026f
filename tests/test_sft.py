"""Fine-tuning with real Ray Train, real DeepSpeed (gloo on CPU), 2 workers and a tiny model."""

import json

import numpy as np
import pytest
import ray.train
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secondthought.config import ConfigError, DataConfig, PrepareConfig, RayConfig, SFTConfig
from secondthought.prepare.stage import run_prepare
from secondthought.sft.driver import run_sft
from secondthought.training.batching import Row, bucketed, collate, micro_batches_per_epoch, rows_of_rank
from secondthought.training.schedule import lr_factor
from tests.conftest import shared_file

TINY = dict(model="tiny-llama", micro_batch_size=4, lr=3e-3, warmup_fraction=0.0, log_every=100)


def steps(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows


def prepare(data: DataConfig, out):
    run_prepare(data, PrepareConfig(cost_sets=[(1, 1, 1)]), RayConfig(), out, progress=False)
    return out


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    """The bundled sample, so that these tests run everywhere."""
    return prepare(DataConfig(), tmp_path_factory.mktemp("prepared") / "sample")


@pytest.fixture(scope="module")
def prepared_real(ray_local, tmp_path_factory):
    data = DataConfig(dataset="moral-stories", input=[str(shared_file("moral_stories", "dev.jsonl"))],
                      eval_fraction=0.1, test_fraction=0.1)
    return prepare(data, tmp_path_factory.mktemp("prepared") / "ms")


def test_collate_masks_prompt_and_padding():
    rows = [Row(np.array([5, 6, 7, 8]), 2), Row(np.array([9, 10]), 1)]
    batch = collate(rows, pad_id=0, mask_prompt=True)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert batch.tokens == 6 and batch.padding_fraction == pytest.approx(0.25)
    assert collate(rows, 0, mask_prompt=False).labels.tolist()[0] == [5, 6, 7, 8]


def test_bucketing_is_deterministic_covers_each_rank_and_reduces_padding():
    rng = np.random.default_rng(0)
    rows = [Row(np.arange(int(n)), 1) for n in rng.integers(5, 200, size=1000)]
    mine = [list(rows_of_rank(rows, r, 2)) for r in range(2)]
    assert len(mine[0]) == len(mine[1]) == 500 and not {id(r) for r in mine[0]} & {id(r) for r in mine[1]}
    first = [[id(r) for r in b] for b in bucketed(mine[0], 8, 16, seed=1, epoch=0)]
    again = [[id(r) for r in b] for b in bucketed(mine[0], 8, 16, seed=1, epoch=0)]
    other_epoch = [[id(r) for r in b] for b in bucketed(mine[0], 8, 16, seed=1, epoch=1)]
    assert first == again and first != other_epoch
    assert len(first) == -(-500 // 8) == micro_batches_per_epoch(1000, 2, 8, 1, 16)
    bucketed_pad = np.mean([collate(b, 0, True).padding_fraction for b in bucketed(mine[0], 8, 16, 1, 0)])
    plain_pad = np.mean([collate(mine[0][i:i + 8], 0, True).padding_fraction for i in range(0, 496, 8)])
    assert bucketed_pad < plain_pad / 3


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), world=st.integers(1, 4), micro=st.integers(1, 8), window=st.integers(1, 6),
       accum=st.integers(1, 4))
def test_every_row_is_trained_every_epoch_and_ranks_run_the_same_batches(n, world, micro, window, accum):
    rows = [Row(np.arange(1 + (k * 37) % 50), 1) for k in range(n)]
    expected = micro_batches_per_epoch(n, world, micro, accum, window)
    per_rank = [list(bucketed(rows_of_rank(rows, r, world), micro, window, seed=0, epoch=1, grad_accum=accum))
                for r in range(world)]
    if expected == 0:  # fewer rows than workers: sft refuses to start
        assert n < world
        return
    seen = [id(row) for batches in per_rank for batch in batches for row in batch]
    assert set(seen) == {id(r) for r in rows}  # every row, in every epoch
    # repeats only to even out the ranks, and where a rank has fewer rows than whole steps need batches
    repeats = len(seen) - n
    assert repeats < world * accum, repeats
    if -(-n // world) % (micro * accum) == 0:
        assert repeats == (-n) % world
    for batches in per_rank:
        assert len(batches) == expected and expected % accum == 0
        assert all(1 <= len(b) <= micro for b in batches)


def test_lr_schedule():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert 0.1 < lr_factor(55, 100, 10, 0.1) < 1.0


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--sft.offload_params needs --sft.zero_stage 3"):
        SFTConfig(offload_params=True)
    with pytest.raises(ConfigError, match="--sft.zero_stage"):
        SFTConfig(zero_stage=4)


@pytest.mark.parametrize("data", ["sample", pytest.param("moral stories", marks=pytest.mark.slow)])
def test_loss_goes_down_with_zero3_and_the_export_is_the_trained_model(data, request, tmp_path):
    prepared = request.getfixturevalue("prepared" if data == "sample" else "prepared_real")
    epochs, eval_every = (2, 8) if data == "sample" else (1, 10)
    out = tmp_path / "sft"
    summary = run_sft(prepared, SFTConfig(**TINY, epochs=epochs, grad_accum=2, zero_stage=3, eval_every=eval_every,
                                          max_eval_rows=64), RayConfig(), out)
    rows = steps(out)
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    assert last < first - 2.0, (first, last)
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) >= 2 and min(evals) < evals[0]
    assert summary["steps"] == summary["total_steps"] == len(rows)
    assert all(r["tokens_per_s"] > 0 and 0 <= r["padding"] < 0.5 for r in rows)
    assert (out / "loss.png").stat().st_size > 10_000
    assert list((out / "tensorboard").iterdir())

    # The exported model is the trained one: its loss on training chains is far below the base model's.
    trained, base = (loss_on(out / name, prepared, "train") for name in ("model", "base"))
    assert trained < base - 2.0, (trained, base)


def loss_on(model_dir, prepared, split: str, n: int = 8) -> float:
    from secondthought.models.lm import load_model
    from secondthought.runs import PreparedDir

    rows, _ = PreparedDir(prepared).first_chains(split, [])
    batch = collate([Row(np.asarray(r["input_ids"]), len(r["prompt_ids"])) for r in rows[:n]], 0, True)
    inputs = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        return float(load_model(model_dir).eval()(**inputs).loss)


@pytest.mark.slow  # three fine-tuning runs with a crash, about 6 minutes on 2 cores
def test_worker_death_and_resume_continue_exactly(prepared, tmp_path):
    config = dict(TINY, epochs=1, max_steps=8, eval_every=4, max_eval_rows=32)
    clean = tmp_path / "clean"
    run_sft(prepared, SFTConfig(**config), RayConfig(), clean)
    reference = {r["step"]: r["loss"] for r in steps(clean)}
    assert sorted(reference) == list(range(1, 9))

    # A worker process dies at step 6: Ray Train restarts the group from the checkpoint of step 4.
    killed = tmp_path / "killed"
    summary = run_sft(prepared, SFTConfig(**config, fault_injection_step=6, max_failures=1), RayConfig(), killed)
    logged = [r["step"] for r in steps(killed)]
    assert (killed / "fault-injected").exists()
    assert logged == [1, 2, 3, 4, 5, 5, 6, 7, 8]  # step 5 ran before the crash and again after it
    assert summary["steps"] == 8
    after = {r["step"]: r["loss"] for r in steps(killed)}
    for step in range(5, 9):
        assert after[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-5)

    # Without restarts the run fails; --resume continues from step 4 with the same next-step loss.
    failed = tmp_path / "failed"
    with pytest.raises(ray.train.TrainingFailedError):
        run_sft(prepared, SFTConfig(**config, fault_injection_step=6, max_failures=0), RayConfig(), failed)
    with pytest.raises(ConfigError, match="--resume"):
        run_sft(prepared, SFTConfig(**config), RayConfig(), failed)
    run_sft(prepared, SFTConfig(**config, fault_injection_step=6), RayConfig(), failed, resume=True)
    resumed = steps(failed)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    assert resumed[5]["loss"] == pytest.approx(reference[5], rel=1e-4, abs=1e-5)


def test_rng_state_round_trips_through_plain_json():
    import json
    import random

    from secondthought.sft.worker import _rng_state, _set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3), np.random.randn()  # numpy holds a cached gaussian
    saved = json.loads(json.dumps(_rng_state()))
    first = (random.random(), np.random.randn(), torch.rand(1).item())
    _set_rng_state(saved)
    assert (random.random(), np.random.randn(), torch.rand(1).item()) == first


@pytest.mark.slow  # four fine-tuning runs, about 6 minutes on 2 cores
def test_zero0_fp32_resumes_and_an_early_stop_stays_stopped(prepared, tmp_path):
    """Without ZeRO, fp32 checkpoints have no optimizer shards: they must still count as complete."""
    config = dict(TINY, zero_stage=0, epochs=1, max_steps=4, eval_every=2, max_eval_rows=32)
    failed = tmp_path / "failed"
    with pytest.raises(ray.train.TrainingFailedError):
        run_sft(prepared, SFTConfig(**config, fault_injection_step=3, max_failures=0), RayConfig(), failed)
    run_sft(prepared, SFTConfig(**config, fault_injection_step=3), RayConfig(), failed, resume=True)
    assert [r["step"] for r in steps(failed)] == [1, 2, 3, 4]  # continued from step 2 (from 0: 1, 2, 1, 2, 3, 4)

    # Diverging on purpose (lr 5): the second evaluation is worse and patience 1 stops the run.
    stopped = tmp_path / "stopped"
    summary = run_sft(prepared, SFTConfig(**dict(config, lr=5.0, max_steps=8, eval_every=1), patience=1),
                      RayConfig(), stopped)
    assert summary["stopped_early"] and summary["steps"] < 8
    # The exported model is the best evaluated one, not the last
    evals = {r["step"]: r["eval_loss"] for r in steps(stopped) if "eval_loss" in r}
    best, last = min(evals, key=evals.get), max(evals)
    assert best != last and summary["best_eval_loss"] == evals[best]
    exported = loss_on(stopped / "model", prepared, "eval", n=32)
    assert abs(exported - evals[best]) < abs(exported - evals[last]), (exported, evals)
    # --resume, and a restart after a crash between the stop and the summary, finish without training on
    logged = len(steps(stopped))
    for crashed in (False, True):
        if crashed:
            (stopped / "summary.json").unlink()
        run_sft(prepared, SFTConfig(**dict(config, lr=5.0, max_steps=8, eval_every=1), patience=1), RayConfig(),
                stopped, resume=True)
        assert len(steps(stopped)) == logged
