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
    """The installed `secondthought prepare` on the embedded defaults, in its own process and Ray."""
    out = tmp_path / "sample"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    exe = os.path.join(os.path.dirname(sys.executable), "secondthought")
    done = subprocess.run([exe, "prepare", "--out", str(out), "--ray.num_cpus", "2", "--progress", "false"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == 204
    assert manifest["chains_out"] >= 204
    assert sorted(p.name for p in (out / "data").iterdir()) == ["eval", "test", "train"]
