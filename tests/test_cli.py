import json
import os
import subprocess
import sys

from secondthought.cli import run


def test_help_lists_the_stages(capsys):
    try:
        run(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "prepare" in out and "edits" in out


def test_stage_help_explains_every_option(capsys):
    try:
        run(["prepare", "--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for flag in ("--data.dataset", "--data.input", "--prepare.cost_sets", "--prepare.reverse", "--ray.address", "--out"):
        assert flag in out
    assert "quarantine" in out


def test_edits_command(capsys):
    assert run(["edits", "Tom shoves people", "Tom asks people"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["<|rep|> 1 shoves <|with|> asks", 'replace "shoves" with "asks" (word 2)', "cost 1"]


def test_invalid_config_exits_2_naming_the_flag(capsys, tmp_path):
    assert run(["prepare", "--out", str(tmp_path / "o"), "--data.dataset", "nope"]) == 2
    assert "--data.dataset 'nope' is not known" in capsys.readouterr().err
    assert run(["prepare", "--out", str(tmp_path / "o"), "--prepare.cost_sets", "[[1, 0, 1]]"]) == 2
    assert "--prepare.cost_sets" in capsys.readouterr().err


def test_readme_main_command_runs_from_the_console_script(tmp_path):
    """The installed `secondthought pipeline` (the README's main job) in its own process and Ray,
    with a tiny model instead of SmolLM2 so that it takes a minute."""
    out = tmp_path / "demo"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    exe = os.path.join(os.path.dirname(sys.executable), "secondthought")
    done = subprocess.run([exe, "pipeline", "--out", str(out), "--progress", "false", "--sft.model", "tiny-llama",
                           "--sft.epochs", "1", "--sft.lr", "0.003"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SecondThought run finished" in done.stdout and str(out / "sft" / "model") in done.stdout
    manifest = json.loads((out / "prepared" / "manifest.json").read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == 204
    assert sorted(p.name for p in (out / "prepared" / "data").iterdir()) == ["eval", "test", "train"]
    assert (out / "sft" / "model" / "model.safetensors").is_file()
