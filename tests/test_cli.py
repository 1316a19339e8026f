import json
import os
import re
import subprocess
import sys

from secondthought.cli import run

from .processes import ProcessWatch


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
    assert lines == ["<|rep|> 1 shoves <|with|> asks", 'replace "shoves" with "asks"',
                     'replace "shoves" with "asks" (word 2)', "cost 1"]


def test_invalid_config_exits_2_naming_the_flag(capsys, tmp_path):
    assert run(["prepare", "--out", str(tmp_path / "o"), "--data.dataset", "nope"]) == 2
    assert "--data.dataset 'nope' is not known" in capsys.readouterr().err
    assert run(["prepare", "--out", str(tmp_path / "o"), "--prepare.edit_format", "xml"]) == 2
    assert "--prepare.edit_format must be tokens or words, got 'xml'" in capsys.readouterr().err
    assert run(["prepare", "--out", str(tmp_path / "o"), "--prepare.cost_sets", "[[1, 0, 1]]"]) == 2
    assert "--prepare.cost_sets" in capsys.readouterr().err


def test_readme_main_command_runs_from_the_console_script_on_loopback(tmp_path):
    """The installed `secondthought pipeline` (the README's main job) in its own process and Ray,
    with a tiny model instead of SmolLM2 so that it takes a minute. Its Ray listens on loopback
    only, without the caller setting anything."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    exe = os.path.join(os.path.dirname(sys.executable), "secondthought")
    command = [exe, "pipeline", "--out", str(out), "--progress", "false", "--sft.model", "tiny-llama",
               "--sft.epochs", "1", "--sft.lr", "0.003", "--rl.iterations", "2", "--rl.max_new_tokens", "16",
               "--rl.discriminator", "tiny-bert", "--eval.judge", "tiny-bert", "--eval.max_new_tokens", "16",
               "--eval.bootstrap", "100", "--baseline", "false"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        watch = ProcessWatch(proc)
        stdout, stderr = watch.wait(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    assert any(ip in loopback for ip, _, _ in watch.listening)
    # Nothing listens on another address: neither Ray nor the ranks' rendezvous store (rendezvous.py)
    assert all(ip in loopback for ip, _, _ in watch.listening), \
        [(ip, port, watch.titles[key]) for ip, port, key in watch.listening if ip not in loopback]
    assert not watch.survivors(), "processes of the command's Ray outlived it"
    assert "SecondThought run finished" in stdout and str(out / "sft" / "model") in stdout
    manifest = json.loads((out / "prepared" / "manifest.json").read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == 204
    assert sorted(p.name for p in (out / "prepared" / "data").iterdir()) == ["eval", "test", "train"]
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    assert (out / "rl" / "model" / "model.safetensors").is_file() and str(out / "rl" / "model") in stdout
    systems = [s["system"] for s in json.loads((out / "eval" / "report.json").read_text())["systems"]]
    assert systems == ["copy", "reference", "sft-edits", "sft-edits (constrained)", "sft-edits (derived)", "sft-rl",
                       "sft-rl (constrained)", "sft-rl (derived)"]
    assert not (out / "sft-targets").exists()
    assert str(out / "eval" / "report.md") in stdout
    # The terminal shows the project's progress (the fine-tuning's steps, followed by the driver) and not
    # the noise of Ray and its workers, which the run's log keeps
    terminal = stdout + stderr
    assert re.search(r"^sft \d+/\d+ steps \| loss", terminal, re.M) and "eval: sft-edits wrote" in terminal
    assert "(RayTrainWorker" not in terminal and "Token authentication" not in terminal, terminal[:3000]
    [log] = (out / "logs").glob("pipeline-*.log")
    assert "(RayTrainWorker" in log.read_text() and f"full log: {log}" in stdout
