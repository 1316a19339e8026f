"""The run-directory contract and the training-support helpers, on folders made here."""

import json
from pathlib import Path

import pytest

from secondthought.config import ConfigError
from secondthought.runs import (
    ModelInfo,
    PreparedDir,
    TrainingDir,
    base_of,
    model_folder,
    read_model_info,
    run_once,
    write_model_info,
)
from secondthought.training.engine import deepspeed_files_complete, newest_checkpoint


def fake_model(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_model_folder_check_names_the_flag_and_the_missing_part(tmp_path):
    with pytest.raises(ConfigError, match=r"--policy .* is not a model folder \(no config.json\)"):
        model_folder(tmp_path, "--policy")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="--model .* holds no safetensors weights"):
        model_folder(tmp_path, "--model")
    assert model_folder(fake_model(tmp_path / "m"), "--model") == (tmp_path / "m").resolve()


def test_model_info_round_trip_defaults_and_base(tmp_path):
    model, base = fake_model(tmp_path / "model"), fake_model(tmp_path / "base")
    assert read_model_info(model) == ModelInfo() and read_model_info(model).writes_chains
    assert base_of(model) == model  # nothing recorded: the model itself
    info = ModelInfo(stage="sft", writes_chains=False, base_model="smollm2", base_folder=str(base))
    write_model_info(model, info)
    assert read_model_info(model) == info and base_of(model) == base
    data = json.loads((model / "secondthought.json").read_text())
    data["added_later"] = 1  # a newer writer's field does not break an older reader
    (model / "secondthought.json").write_text(json.dumps(data))
    assert read_model_info(model) == info


def test_training_dir_refuses_to_replace_or_continue_without_the_flag(tmp_path):
    run = TrainingDir.start(tmp_path / "run", {"a": 1}, resume=False, overwrite=False)
    (run.path / "partial").write_text("x")
    with pytest.raises(ConfigError, match="--resume"):
        TrainingDir.start(run.path, {"a": 1}, resume=False, overwrite=False)
    assert TrainingDir.start(run.path, {"a": 2}, resume=True, overwrite=False).path == run.path
    run.write_summary({"model": "m"})
    with pytest.raises(ConfigError, match="--overwrite"):
        TrainingDir.start(run.path, {"a": 1}, resume=False, overwrite=False)
    again = TrainingDir.start(run.path, {"a": 3}, resume=False, overwrite=True)
    assert not again.done and not (again.path / "partial").exists()
    assert json.loads((again.path / "config.json").read_text()) == {"a": 3}


def test_prepared_dir_must_hold_a_manifest(tmp_path):
    with pytest.raises(ConfigError, match="--prepared .* run `secondthought prepare` first"):
        PreparedDir.open(tmp_path)
    assert PreparedDir(tmp_path).first_chains("train", ["source"]) == ([], {})
    assert PreparedDir(tmp_path).count_forward("train") == 0


def test_run_once_runs_a_stage_until_its_last_artefact_exists(tmp_path, capsys):
    done = tmp_path / "stage" / "summary.json"
    calls = []

    def run(unfinished):
        calls.append(unfinished)
        done.parent.mkdir(exist_ok=True)
        done.write_text('{"ok": true}')

    assert run_once("stage", done, "doing it", run) == {"ok": True}
    assert run_once("stage", done, "doing it", run) == {"ok": True}
    assert calls == [False] and "stage: done before" in capsys.readouterr().out


def test_newest_checkpoint_is_the_furthest_complete_one(tmp_path):
    for name, step, shards in (("a", 4, 2), ("b", 8, 1), ("c", 6, 2)):
        (tmp_path / name / "engine").mkdir(parents=True)
        (tmp_path / name / "state.json").write_text(json.dumps({"step": step}))
        (tmp_path / name / "engine" / "mp_rank_00_model_states.pt").write_bytes(b"")
        for rank in range(shards):
            (tmp_path / name / "engine" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert newest_checkpoint(tmp_path, "step") == tmp_path / "b"
    complete = lambda c: deepspeed_files_complete(c / "engine", world=2)  # noqa: E731
    assert newest_checkpoint(tmp_path, "step", complete) == tmp_path / "c"
    assert newest_checkpoint(tmp_path / "none", "step") is None


def user_folder(path):
    """A folder of someone's own files (what `--out .` or a typo could point at)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work")
    return path


def test_no_command_empties_a_folder_it_did_not_write(tmp_path):
    from secondthought.config import DataConfig, PrepareConfig, RayConfig
    from secondthought.prepare.stage import run_prepare
    from secondthought.runs import claim

    mine = user_folder(tmp_path / "mine")
    for attempt in (lambda: claim(mine, "prepared", replace=True),
                    lambda: TrainingDir.start(mine, {}, resume=False, overwrite=True),
                    lambda: TrainingDir.start(mine, {}, resume=True, overwrite=False),
                    lambda: run_prepare(DataConfig(dataset="sample"), PrepareConfig(), RayConfig(), mine, overwrite=True)):
        with pytest.raises(ConfigError, match="was not written by secondthought"):
            attempt()
        assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]

    # a folder of ours for one kind is not replaced by a command of another
    prepared = claim(tmp_path / "prepared", "prepared")
    (prepared / "data").mkdir()
    with pytest.raises(ConfigError, match="holds a prepared folder, not a training one"):
        TrainingDir.start(prepared, {}, resume=False, overwrite=True)
    assert (prepared / "data").is_dir()
    # our own folder of the same kind is emptied with the flag
    assert not list(p for p in claim(prepared, "prepared", replace=True).iterdir() if p.name != ".secondthought")


def test_bad_inputs_are_found_before_an_earlier_result_is_touched(tmp_path):
    from secondthought.config import DataConfig, PrepareConfig, RayConfig, SFTConfig
    from secondthought.prepare.stage import run_prepare
    from secondthought.runs import claim
    from secondthought.sft.driver import run_sft

    prepared = claim(tmp_path / "prepared", "prepared")
    (prepared / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="--data.input: no such file"):
        run_prepare(DataConfig(dataset="moral-stories", input=[str(tmp_path / "typo.jsonl")]), PrepareConfig(),
                    RayConfig(), prepared, overwrite=True)
    assert (prepared / "manifest.json").is_file()
    with pytest.raises(ConfigError, match="--sft.model .*nowhere is not a model folder"):
        run_sft(prepared, SFTConfig(model="./nowhere"), RayConfig(), tmp_path / "sft", overwrite=True)
    assert not (tmp_path / "sft").exists()


def test_a_pipeline_rerun_with_other_options_is_refused_naming_them(tmp_path):
    from secondthought.pipeline import refuse_changed

    before = {"sft": {"epochs": 2, "lr": 1e-4}, "eval": {"judge": "minilm"}, "baseline": True}
    refuse_changed(before, {"sft": {"epochs": 2, "lr": 1e-4}, "eval": {"judge": "minilm", "judge_kind": "frozen"},
                            "baseline": True}, tmp_path)  # an option new since the run: nothing to compare
    with pytest.raises(ConfigError, match=r"--sft.epochs 2 -> 3; --baseline True -> False"):
        refuse_changed(before, {"sft": {"epochs": 3, "lr": 1e-4}, "eval": {"judge": "minilm"}, "baseline": False},
                       tmp_path)


def test_a_folder_with_a_manifest_but_not_our_marker_is_never_emptied_nor_one_holding_the_input(tmp_path):
    """A user's project folder with its own manifest.json (and the very input file) was emptied by
    ``prepare --overwrite``: only a folder carrying our marker may be emptied, and an --out holding an input is
    refused."""
    from secondthought.config import DataConfig, PrepareConfig, RayConfig
    from secondthought.data import sample_path
    from secondthought.prepare.stage import run_prepare
    from secondthought.runs import MANIFEST, claim

    project = user_folder(tmp_path / "project")
    (project / MANIFEST).write_text('{"name": "my project"}')
    (project / "src").mkdir()
    (project / "pairs.jsonl").write_text(Path(sample_path()).read_text())
    with pytest.raises(ConfigError, match="may not be ours"):
        claim(project, "prepared", replace=True, done_file=MANIFEST)
    with pytest.raises(ConfigError, match="holds the input"):
        run_prepare(DataConfig(dataset="sample", input=[str(project / "pairs.jsonl")]), PrepareConfig(), RayConfig(),
                    project, overwrite=True)
    assert sorted(p.name for p in project.iterdir()) == [MANIFEST, "pairs.jsonl", "src", "thesis.tex"]


def test_a_done_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import os

    from secondthought.runs import write_json

    path = tmp_path / "summary.json"
    write_json(path, {"done": 1})

    def crash(src, dst):
        raise OSError("the disk is gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_json(path, {"done": 2, "more": "x" * 100_000})
    assert json.loads(path.read_text()) == {"done": 1} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_checkpoint_file_that_changed_since_it_was_saved_is_never_loaded(tmp_path):
    """DeepSpeed reads its optimizer states with torch.load(weights_only=False): anyone who can write the run folder
    could run code in the workers. Every file's SHA-256 is recorded when saved and checked before loading."""
    from secondthought.training.engine import CheckpointChanged, digests, verify

    folder = tmp_path / "step_4"
    (folder / "engine").mkdir(parents=True)
    (folder / "engine" / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (folder / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"moments")
    (folder / "state.json").write_text("{}")
    recorded = digests(folder, "engine")
    assert set(recorded) == {"engine/mp_rank_00_model_states.pt", "engine/zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    verify(folder, recorded, "engine")  # as saved: loads
    (folder / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"a crafted pickle")
    with pytest.raises(CheckpointChanged, match="optim_states.pt changed since the checkpoint was saved"):
        verify(folder, recorded, "engine")
    (folder / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"moments")
    (folder / "engine" / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointChanged, match="extra.pt is new"):
        verify(folder, recorded, "engine")
    with pytest.raises(CheckpointChanged, match="records no digests"):
        verify(folder, {}, "engine")
    everything = digests(folder)
    verify(folder, {k: v for k, v in everything.items() if k != "state.json"}, ignore=("state.json",))
