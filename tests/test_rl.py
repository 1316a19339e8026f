"""The RL stage end to end on real Ray actors and a real DeepSpeed learner, with tiny models."""

import json
import os

import numpy as np
import pytest
import ray

from secondthought.config import ConfigError, DataConfig, PrepareConfig, RayConfig, RLConfig
from secondthought.prepare.stage import run_prepare
from secondthought.rl.driver import run_rl
from secondthought.tracking import read_metrics
from tests.processes import ProcessWatch

FAST = dict(max_new_tokens=16, rollout_workers=2, learner_workers=1, log_every=100)


@pytest.fixture(scope="module")
def prepared(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "prepared"
    run_prepare(DataConfig(), PrepareConfig(cost_sets=[(1, 1, 1)], reverse=True), RayConfig(), out, progress=False)
    return out


@pytest.fixture(scope="module")
def policy(tokenizer, tmp_path_factory):
    from secondthought.models.lm import build_base_model

    return build_base_model("tiny-llama", tokenizer, tmp_path_factory.mktemp("rl") / "policy")


def scores(out):
    return {i: row["score"] for i, row in read_metrics(out / "metrics.jsonl", "iteration").items()}


def test_a_known_reward_rises(prepared, policy, tmp_path):
    # a reward over any tokens, not chains: free rollouts (constrained ones leave it little to choose)
    cfg = RLConfig(**FAST, iterations=8, reward="tests.rewards:even_token_ids", lr=3e-3, kl_coef=0.01, ppo_epochs=2,
                   top_k=4, checkpoint_every=8, decoding="free")
    out = tmp_path / "rl"
    summary = run_rl(prepared, policy, cfg, RayConfig(), out)
    got = scores(out)
    assert sorted(got) == list(range(1, 9))
    assert np.mean([got[i] for i in range(3, 9)]) > got[1] + 0.2, got
    rows = read_metrics(out / "metrics.jsonl", "iteration")
    for name in ("kl", "entropy", "clip_fraction", "vf_loss", "pg_loss", "rollout_tokens_per_s", "rollout_s",
                 "score_s", "learn_s", "sync_s"):
        assert all(np.isfinite(row[name]) for row in rows.values()), name
    assert rows[1]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout's policy is the reference
    assert max(row["kl"] for row in rows.values()) > 0.1
    assert summary["iterations"] == 8 and (out / "rl.png").stat().st_size > 10_000

    from transformers import AutoModelForCausalLM

    refined = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
    start = AutoModelForCausalLM.from_pretrained(policy, use_safetensors=True)
    assert any(not np.allclose(a.detach(), b.detach()) for a, b in zip(refined.parameters(), start.parameters()))
    assert (out / "model" / "tokenizer.json").is_file()


def test_the_discriminator_warm_starts_and_is_checked_on_pairs_it_never_learns_from(prepared, policy, tmp_path):
    """Before the first iteration the discriminator learns gold from reversed chains; a tenth of the prompts is
    held out of all its training, and its accuracy there is logged before and after the warm start and in every
    iteration, with its accuracy on each iteration's new policy samples."""
    cfg = RLConfig(**FAST, iterations=2, discriminator="tiny-bert", disc_lr=1e-3, disc_warmup_epochs=4,
                   checkpoint_every=2)
    out = tmp_path / "rl"
    summary = run_rl(prepared, policy, cfg, RayConfig(), out)
    warm = summary["discriminator"]["warm_start"]
    assert warm["epochs"] == 4 and warm["held_out_pairs"] > 0 and warm["pairs"] > 5 * warm["held_out_pairs"]
    assert 0 <= warm["accuracy_before"] <= 1 and 0 <= warm["accuracy_after"] <= 1 and 0 <= warm["train_accuracy"] <= 1
    # (tiny-bert is random and too small to learn the difference; MiniLM's figures are in the README)
    rows = read_metrics(out / "metrics.jsonl", "iteration")
    for row in rows.values():
        assert 0 <= row["disc_heldout_accuracy"] <= 1 and 0 <= row["disc_policy_accuracy"] <= 1
    assert rows[1]["disc_heldout_accuracy"] == pytest.approx(warm["accuracy_after"])  # no update in between
    assert summary["discriminator"]["disc_heldout_accuracy"] == rows[2]["disc_heldout_accuracy"]


def test_constrained_rollouts_write_only_chains_that_apply_and_are_scored_under_their_masks(prepared, policy, tmp_path):
    """An untrained policy's free chains never apply (validity -1); constrained, every rollout's chain applies to
    its source, and the first iteration's KL to the reference is 0: both score under the rollout's masks."""
    cfg = RLConfig(**dict(FAST, max_new_tokens=64), iterations=2, reward="validity", decoding="constrained",
                   checkpoint_every=2)
    out = tmp_path / "rl"
    run_rl(prepared, policy, cfg, RayConfig(), out)
    rows = read_metrics(out / "metrics.jsonl", "iteration")
    assert all(row["validity"] >= 0 for row in rows.values()), rows  # 0 or 1 a sample: never a broken chain
    assert rows[1]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert all(np.isfinite(row[name]) for row in rows.values() for name in ("kl", "entropy", "pg_loss", "approx_kl"))
    with pytest.raises(ConfigError, match="--rl.decoding"):
        RLConfig(decoding="beam")


def test_a_policy_trained_in_one_edit_format_refuses_data_prepared_in_the_other(prepared, policy, tmp_path):
    import shutil

    from secondthought.runs import ModelInfo, PreparedDir, write_model_info

    data = PreparedDir(prepared).edit_format
    other = "tokens" if data == "words" else "words"
    trained = tmp_path / "trained-policy"
    shutil.copytree(policy, trained)
    write_model_info(trained, ModelInfo(stage="sft", edit_format=other))
    with pytest.raises(ConfigError, match=f"writes '{other}' chains but .* --prepare.edit_format {data}"):
        run_rl(prepared, trained, RLConfig(**FAST), RayConfig(), tmp_path / "rl")


@pytest.mark.slow  # seven RL runs, about 6 minutes on 2 cores
def test_dead_actors_and_resume_leave_the_run_as_if_nothing_happened(prepared, policy, tmp_path, capfd):
    cfg = dict(FAST, discriminator="tiny-bert", checkpoint_every=2, lr=1e-3)
    clean = tmp_path / "clean"
    run_rl(prepared, policy, RLConfig(**cfg, iterations=4), RayConfig(), clean)
    reference = scores(clean)
    parts = read_metrics(clean / "metrics.jsonl", "iteration")[4]
    assert {"disc_logodds", "validity", "disc_loss", "disc_accuracy"} <= set(parts)

    # Rollout worker 0 dies while generating iteration 3: Ray restarts it, it gets the current weights
    # again and redoes its prompts with the same seed, so the run is the clean run.
    killed = tmp_path / "killed"
    run_rl(prepared, policy, RLConfig(**cfg, iterations=4, fault_injection_iteration=3), RayConfig(), killed)
    assert (killed / "fault-injected").exists()
    assert "rollout worker 0 died" in capfd.readouterr().out
    assert scores(killed) == pytest.approx(reference, rel=1e-4, abs=1e-4)

    # The reference dies while scoring iteration 2: restarted with the same frozen weights, it scores again.
    capfd.readouterr()
    run_rl(prepared, policy, RLConfig(**cfg, iterations=4, fault_injection_iteration=2,
                                      fault_injection_actor="reference"), RayConfig(), tmp_path / "lost-reference")
    assert "reference died" in capfd.readouterr().out
    assert scores(tmp_path / "lost-reference") == pytest.approx(reference, rel=1e-4, abs=1e-4)

    # The learner (while learning iteration 4) or the discriminator (while updating in iteration 3) dies:
    # the run rolls back to the checkpoint of iteration 2 with fresh actors and redoes iterations 3 and 4.
    for actor, iteration in (("learner", 4), ("discriminator", 3)):
        lost = tmp_path / f"lost-{actor}"
        capfd.readouterr()
        run_rl(prepared, policy, RLConfig(**cfg, iterations=4, fault_injection_iteration=iteration,
                                          fault_injection_actor=actor), RayConfig(), lost)
        assert (lost / "fault-injected").exists()
        assert "rolling back to the last checkpoint" in capfd.readouterr().out
        assert scores(lost) == pytest.approx(reference, rel=1e-4, abs=1e-4), actor

    # A run stopped after iteration 2 continues from its checkpoint to the same iterations 3 and 4.
    partial = tmp_path / "partial"
    run_rl(prepared, policy, RLConfig(**cfg, iterations=2), RayConfig(), partial)
    with pytest.raises(ConfigError, match="--overwrite"):
        run_rl(prepared, policy, RLConfig(**cfg, iterations=4), RayConfig(), partial)
    capfd.readouterr()
    summary = run_rl(prepared, policy, RLConfig(**cfg, iterations=4), RayConfig(), partial, resume=True)
    assert "resumed at iteration 2" in capfd.readouterr().out
    assert summary["iterations"] == 4
    assert scores(partial) == pytest.approx(reference, rel=1e-4, abs=1e-4)
    assert json.loads((partial / "summary.json").read_text())["model"].endswith("model")


def test_two_learners_meet_over_tcp_as_on_a_cluster(prepared, policy, tmp_path):
    """Two data-parallel DeepSpeed learners (ZeRO-3, weights gathered for the sync) that rendezvous over
    TCP at rank 0's store, through Ray's --ray.address path as on a cluster."""
    cfg = RLConfig(**dict(FAST, rollout_workers=1, learner_workers=2), iterations=2, minibatch_size=8,
                   micro_batch_size=4, zero_stage=3, reward="validity", checkpoint_every=2)
    out = tmp_path / "rl"
    with ProcessWatch(pid=os.getpid()).polling() as watch:  # this test's Ray is a child of this process
        summary = run_rl(prepared, policy, cfg, RayConfig(address="auto"), out)
    assert summary["iterations"] == 2 and (out / "model" / "model.safetensors").is_file()
    # The rendezvous store listens on the node's own address, never on every address
    learners = {(ip.removeprefix("::ffff:"), port) for ip, port, key in watch.listening
                if any("Learner" in t for t in watch.titles[key])}
    assert learners and all(ip == ray.util.get_node_ip_address() for ip, _ in learners), learners
    assert all(ip.removeprefix("::ffff:") == ray.util.get_node_ip_address() for ip, _, _ in watch.listening), \
        watch.listening
    rows = read_metrics(out / "metrics.jsonl", "iteration")
    assert rows[2]["kl"] != 0.0 and np.isfinite(rows[2]["pg_loss"])  # the synced weights changed the policy
