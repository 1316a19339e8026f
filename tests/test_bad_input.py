"""Bad input: one line naming the problem and the flag, exit code 2, before any Ray work, nothing lost;
and inputs that only look odd (gzip, a byte-order mark, numeric ids) are read."""

import gzip
import json
from dataclasses import replace

import pytest

from secondthought.cli import run
from tests.test_data import STORY


def fake_prepared(path):
    (path / "data").mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    (path / ".secondthought").write_text('{"kind": "prepared"}')
    return path


def fake_model(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


def stories(path, n=3, **changes):
    path.write_text("".join(json.dumps({**STORY, "ID": f"s{i}", **changes}) + "\n" for i in range(n)))
    return path


def error_of(argv, capsys) -> str:
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if err and err[-1].startswith("full log: "):  # work had started in --out: its log is kept there
        # in-process, pytest's capsys replaces sys.stderr, so Ray's log lines bypass the fd capture
        err = [line for line in err[:-1] if line.startswith("secondthought ")]
    assert len(err) == 1, err  # one line, never a traceback
    return err[0]


def test_bad_input_exits_2_with_one_line_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert "cannot tell its format" in error_of(
        ["prepare", "--out", out, "--data.dataset", "generic", "--data.input", str(stories(tmp_path / "a.txt")),
         "--data.columns", '{"source": "immoral_action", "target": "moral_action"}'], capsys)
    assert "none of its first 3 records makes a triple" in error_of(
        ["prepare", "--out", out, "--data.dataset", "generic", "--data.input", str(stories(tmp_path / "b.jsonl")),
         "--data.columns", '{"source": "bad", "target": "good"}'], capsys)
    assert "missing field 'norm'" in error_of(
        ["prepare", "--out", out, "--data.dataset", "moral-stories", "--data.input",
         str(stories(tmp_path / "c.jsonl", norm=None))], capsys)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no records" in error_of(["prepare", "--out", out, "--data.dataset", "moral-stories",
                                           "--data.input", str(empty)], capsys)
    assert not (tmp_path / "out").exists()

    prepared, policy = fake_prepared(tmp_path / "prepared"), fake_model(tmp_path / "policy")
    assert "--sft.model" in error_of(["sft", "--prepared", str(prepared), "--out", out, "--sft.model",
                                      str(tmp_path / "nowhere")], capsys)
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text("{}")
    assert "holds no safetensors weights" in error_of(
        ["rl", "--prepared", str(prepared), "--policy", str(weightless), "--out", out], capsys)
    assert "--rl.reward 'no_such_module:score': cannot import" in error_of(
        ["rl", "--prepared", str(prepared), "--policy", str(policy), "--out", out, "--rl.reward",
         "no_such_module:score"], capsys)
    assert "names a built-in system" in error_of(
        ["eval", "--prepared", str(prepared), "--base", str(policy), "--out", out, "--models",
         json.dumps({"reference": str(policy)})], capsys)
    assert "--base" in error_of(["eval", "--prepared", str(prepared), "--base", str(tmp_path), "--out", out,
                                 "--models", json.dumps({"mine": str(policy)})], capsys)
    assert not (tmp_path / "out").exists()


def test_gzip_a_byte_order_mark_and_numeric_ids_are_read(ray_local, tmp_path, capsys):
    gz = tmp_path / "stories.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({**STORY, "ID": 1000 + i, "immoral_action": f"Ann kicks the dog {i} times."}) + "\n"
                     for i in range(30))
    csv_bom = tmp_path / "pairs.csv"
    csv_bom.write_bytes("\ufeffid,bad,good\n".encode() + "".join(
        f"{i},Tom shoves person {i},Tom asks person {i}\n" for i in range(30)).encode())
    for argv, rows in ((["--data.dataset", "moral-stories", "--data.input", str(gz)], 30),
                       (["--data.dataset", "generic", "--data.input", str(csv_bom), "--data.columns",
                         '{"id": "id", "source": "bad", "target": "good"}'], 30)):
        out = tmp_path / f"out{rows}{argv[1]}"
        assert run(["prepare", "--out", str(out), "--progress", "false", *argv]) == 0, capsys.readouterr().err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["rows_read"] == manifest["rows_out"] == rows and not manifest["rows_quarantined"]


def test_a_preparation_that_keeps_no_row_fails_naming_the_reason(ray_local, tmp_path, capsys):
    """Found only after tokenizing (in Ray): every chain is longer than --prepare.max_tokens."""
    path = stories(tmp_path / "s.jsonl", n=5)
    message = error_of(["prepare", "--out", str(tmp_path / "out"), "--progress", "false", "--data.dataset",
                        "moral-stories", "--data.input", str(path), "--prepare.max_tokens", "8"], capsys)
    assert "no record could be used: 5 of 5 were left out" in message and "> max_tokens 8" in message
    assert (tmp_path / "out" / "quarantine.jsonl").is_file() and not (tmp_path / "out" / "manifest.json").exists()


def test_errors_of_ray_tasks_are_reported_as_their_cause(monkeypatch, capsys):
    import ray.exceptions

    from secondthought import cli
    from secondthought.config import ConfigError

    def failing(error):
        def command(args, sections):
            raise ray.exceptions.RayTaskError("generate", "Traceback (most recent call last):\n  ...\n", error
                                              ).as_instanceof_cause()
        return command

    edits = cli.COMMANDS["edits"]
    monkeypatch.setitem(cli.COMMANDS, "edits", replace(edits, run=failing(ConfigError("--eval.judge 'x' is not an encoder"))))
    assert run(["edits", "a", "b"]) == 2
    assert capsys.readouterr().err.strip() == "secondthought edits: error: --eval.judge 'x' is not an encoder"
    monkeypatch.setitem(cli.COMMANDS, "edits", replace(edits, run=failing(ZeroDivisionError("division by zero"))))
    assert run(["edits", "a", "b"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "secondthought edits: error in a Ray task: ZeroDivisionError: division by zero"
    assert len(err) < 15


@pytest.mark.parametrize("text, words", [
    ("applications:\n  - name: x\n    args: {max_batch_size: 0\n", "not valid YAML at line 4"),
    ("- a\n- b\n", "a mapping of Serve's keys (http_options, applications, ...) is expected, got a list"),
    (None, "applications[0].args: serve.max_batch_size must be at least 1, got 0"),
])
def test_a_bad_serve_config_is_one_line_and_exit_2_before_ray_starts(memorized, tmp_path, capsys, text, words):
    from serve.deploy import CONFIG

    config = tmp_path / "serve.yaml"
    config.write_text(text if text is not None else CONFIG.read_text().replace("max_batch_size: 8", "max_batch_size: 0"))
    assert run(["serve", "--model", str(memorized), "--app-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


@pytest.mark.parametrize("args, words", [
    (["a b", "a c", "--costs", "[0, 1, 1]"], "--costs: edit costs must be positive finite numbers"),
    (["a <|ins|> b", "a c"], "the source holds <|ins|>, a token reserved"),
])
def test_bad_edits_arguments_are_one_line_and_exit_2(capsys, args, words):
    assert run(["edits", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_jsonl_row_with_a_lone_surrogate_goes_to_the_quarantine_and_the_rest_is_prepared(ray_local, tmp_path,
                                                                                           capsys):
    """Valid JSON, no valid Unicode: it killed the whole read task; now it is one quarantined row."""
    path = stories(tmp_path / "s.jsonl", n=6)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("norm\": \"", "norm\": \"\\ud800", 1)
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert run(["prepare", "--out", str(out), "--progress", "false", "--data.dataset", "moral-stories",
                "--data.input", str(path)]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_quarantined"]) == (6, 5, 1), manifest
    [reason] = [json.loads(line)["reason"] for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert "lone surrogate" in reason
