"""`secondthought submit` against a real Ray cluster of this machine's own (tests/local_cluster.py): a head started
with `ray start --head` on 127.0.0.1 with token authentication, the Job Submission API, jobs followed to
SUCCEEDED and stopped midway; and (slow) the tiny pipeline on two nodes, SFT workers and RL learners one
per node, the run directory on the storage both share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import submit
from secondthought.config import ConfigError
from tests.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "secondthought-test-token-0123456789abcdef"


def cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "secondthought.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("head-logs"), auth_token=TOKEN)
    try:
        cluster.start_head(num_cpus=3)
        yield cluster
    finally:
        survivors = cluster.stop()
        assert not survivors, f"processes of the test's cluster outlived it: {survivors}"


def wait_status(head: LocalCluster, submission_id: str, wanted: set[str], timeout: float = 180) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = cli("submit", "--address", head.dashboard, "status", submission_id, env=head.env)
        status = answer.stdout.split(":")[1].strip() if ":" in answer.stdout else ""
        if status in wanted:
            return status
        time.sleep(1)
    raise TimeoutError(f"{submission_id} did not reach {wanted}: {answer.stdout} {answer.stderr}")


def test_prepare_job_runs_to_succeeded_with_its_logs_streamed(head, tmp_path):
    out = tmp_path / "prepared"
    done = cli("submit", "--address", head.dashboard, "--submission-id", "prepare-1", "--", "prepare",
               "--out", str(out), env=head.env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "submitted prepare-1" in done.stdout and "prepare-1: SUCCEEDED" in done.stdout
    assert '"rows_in": 204' in done.stdout  # the stage's own output, streamed from the job's log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_in"] == 204 and manifest["rows_out"] + manifest["rows_quarantined"] == 204
    listed = cli("submit", "--address", head.dashboard, "list", env=head.env)
    assert "prepare-1\tSUCCEEDED\tpython -m secondthought.cli prepare" in listed.stdout
    status = cli("submit", "--address", head.dashboard, "status", "prepare-1", env=head.env)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = cli("submit", "--address", head.dashboard, "logs", "prepare-1", env=head.env)
    assert "secondthought prepare: full log in" in logs.stdout
    assert head.listening() <= {"127.0.0.1", "::ffff:127.0.0.1"}, head.listening()  # the cluster stays on loopback


def test_a_job_stopped_midway_reports_stopped(head, tmp_path):
    sent = cli("submit", "--address", head.dashboard, "--no-wait", "--submission-id", "pipeline-stopped", "--",
               "pipeline", "--config", "jobs/pipeline-tiny.yaml", "--out", str(tmp_path / "run"), env=head.env)
    assert sent.returncode == 0, sent.stderr[-3000:]
    assert "logs pipeline-stopped" in sent.stdout
    wait_status(head, "pipeline-stopped", {"RUNNING"})
    deadline = time.time() + 120
    while "[secondthought] prepare:" not in cli("submit", "--address", head.dashboard, "logs", "pipeline-stopped",
                                 env=head.env).stdout and time.time() < deadline:
        time.sleep(1)
    stop = cli("submit", "--address", head.dashboard, "stop", "pipeline-stopped", env=head.env)
    assert stop.returncode == 0 and "stop requested" in stop.stdout
    assert wait_status(head, "pipeline-stopped", {"STOPPED", "SUCCEEDED", "FAILED"}) == "STOPPED"
    status = cli("submit", "--address", head.dashboard, "status", "pipeline-stopped", env=head.env)
    assert status.returncode == 3
    assert not (tmp_path / "run" / "pipeline.json").exists()


def test_checks_refuse_what_would_fail_on_the_cluster(head, tmp_path):
    base = ["submit", "--address", head.dashboard, "--"]
    relative = cli(*base, "prepare", "--out", "runs/x", env=head.env)
    assert relative.returncode == 2 and "--out runs/x: give an absolute path" in relative.stderr
    gpus = cli(*base, "sft", "--config", "jobs/sft.yaml", "--prepared", str(tmp_path), "--out", str(tmp_path / "s"),
               env=head.env)
    assert gpus.returncode == 2 and "wait forever" in gpus.stderr and "sft: 2 x {CPU: 1, GPU: 1}" in gpus.stderr
    bad = cli(*base, "sft", "--sft.zero_stage", "5", "--prepared", str(tmp_path), "--out", str(tmp_path / "s"),
              env=head.env)
    assert bad.returncode == 2 and "--sft.zero_stage must be 0, 1, 2 or 3" in bad.stderr
    serve = cli(*base, "serve", "--model", str(tmp_path), env=head.env)
    assert serve.returncode == 2 and "RayService" in serve.stderr
    no_token = cli(*base, "prepare", "--out", str(tmp_path / "p"),
                   env=head.env | {"RAY_AUTH_TOKEN": "wrong-token-0123456789abcdefghijkl"})
    assert no_token.returncode == 2 and "cannot reach the cluster" in no_token.stderr
    assert not (tmp_path / "p").exists()
    unknown = cli("submit", "--address", head.dashboard, "status", "no-such-job", env=head.env)
    assert unknown.returncode == 2 and "no-such-job" in unknown.stderr


def test_dry_run_prints_the_job_and_sends_nothing(tmp_path):
    env = dict(os.environ, RAY_ADDRESS="http://127.0.0.1:9")  # nothing listens there: a dry run must not call it
    dry = cli("submit", "--dry-run", "--entrypoint-num-cpus", "1", "--", "pipeline", "--config",
              str(ROOT / "jobs" / "pipeline-tiny.yaml"), "--out", str(tmp_path / "run"), env=env)
    assert dry.returncode == 0, dry.stderr
    job = json.loads(dry.stdout[dry.stdout.index("{"): dry.stdout.rindex("}") + 1])
    assert job["entrypoint"] == (f"python -m secondthought.cli pipeline --config jobs/pipeline-tiny.yaml --out "
                                 f"{tmp_path / 'run'} --ray.address auto")
    assert job["runtime_env"]["working_dir"] == str(ROOT) and ".venv/" in job["runtime_env"]["excludes"]
    assert job["entrypoint_num_cpus"] == 1 and 0 < job["working_dir_upload_mib"] < 20


def test_working_dir_over_the_upload_cap_is_refused_naming_the_largest(tmp_path, monkeypatch):
    import ray._private.runtime_env.packaging as packaging

    (tmp_path / "code.py").write_text("print(1)\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "big.bin").write_bytes(b"\0" * 300_000)
    monkeypatch.setattr(packaging, "GCS_STORAGE_MAX_SIZE", 200_000)
    with pytest.raises(ConfigError, match=r"over Ray's upload cap.*Largest: checkpoints 0 MiB"):
        submit.check_upload(tmp_path, [])
    assert submit.check_upload(tmp_path, ["checkpoints/"]).total == len("print(1)\n")


@pytest.mark.slow
def test_tiny_pipeline_on_two_nodes_places_workers_and_learners_one_per_node(tmp_path):
    cluster = LocalCluster(tmp_path, auth_token=None)
    try:
        cluster.start_head(num_cpus=2, resources={"head_node": 1})
        cluster.add_node(num_cpus=2, resources={"second_node": 1})
        nodes = {n["raylet"]["nodeId"] for n in cluster.alive_nodes()}
        assert len(nodes) == 2
        out = tmp_path / "run"
        done = cli("submit", "--address", cluster.dashboard, "--", "pipeline", "--config", "jobs/pipeline-tiny.yaml",
                   "--sft.num_workers", "2", "--sft.placement_strategy", "STRICT_SPREAD",
                   "--rl.learner_workers", "2", "--rl.minibatch_size", "16", "--rl.placement_strategy",
                   "STRICT_SPREAD", "--baseline", "false", "--out", str(out), env=cluster.env, timeout=1500)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
        assert "SUCCEEDED" in done.stdout
        placed = json.loads((out / "sft" / "summary.json").read_text())["nodes"]
        assert len(placed) == 2 and set(placed) == nodes, placed  # one worker on each node
        learners = json.loads((out / "rl" / "summary.json").read_text())["nodes"]["learner"]
        assert len(learners) == 2 and set(learners) == nodes, learners
        report = json.loads((out / "eval" / "report.json").read_text())
        assert [s["system"] for s in report["systems"]][-3:] == ["sft-rl", "sft-rl (constrained)", "sft-rl (derived)"]
        assert (out / "rl" / "model" / "model.safetensors").is_file()
    finally:
        survivors = cluster.stop()
    assert not survivors, f"processes of the test's cluster outlived it: {survivors}"


def test_the_upload_is_the_projects_root_wherever_submit_runs_and_never_holds_secrets(tmp_path):
    """Run from a home folder, `working_dir: .` uploaded it whole, .env, .aws/credentials and .ssh keys included."""
    home = tmp_path / "home"
    for name in (".env", ".aws/credentials", ".ssh/id_ed25519", "notes.txt"):
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text("secret")
    job, _, _, upload = submit.build(["prepare", "--out", str(tmp_path / "out")], cwd=home)
    assert job.runtime_env["working_dir"] == str(ROOT) and "notes.txt" not in upload.by_top
    assert {"secondthought", "jobs", "serve"} <= set(upload.by_top) and upload.shown()["secondthought"].endswith("MiB")

    project = tmp_path / "project"
    for name in ("src/code.py", ".env", ".env.local", ".ssh/id_ed25519", "deploy.pem", "tls/server.key",
                 "config/credentials.json", ".netrc", "src/nested/.aws/credentials"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    (project / "runtime_env.yaml").write_text("working_dir: .\nexcludes: []\n")
    env = submit.load_runtime_env(project / "runtime_env.yaml", cwd=tmp_path)
    travels = submit.upload_size(project, env["excludes"])
    assert set(travels.by_top) == {"src", "runtime_env.yaml"}  # no key, certificate, credentials or .env
    assert travels.by_top["src"] == (1, 1)  # src/code.py alone: the nested .aws/ stays home


def test_a_head_started_without_the_projects_environment_is_said_before_anything_is_sent(tmp_path):
    """`.venv/bin/ray start --head` from a shell without the venv: a job's `python` is the system's, which failed
    after 12 s with ModuleNotFoundError. submit now says so before sending, in one line."""
    import shutil as sh

    cluster = LocalCluster(tmp_path, auth_token=None, activated=False)
    system_python = sh.which("python", path=cluster.env["PATH"])
    if system_python is None:
        pytest.skip("no `python` outside the venv on PATH: every job would fail to start, tested elsewhere")
    try:
        cluster.start_head(num_cpus=2)
        refused = cli("submit", "--address", cluster.dashboard, "--", "prepare", "--out", str(tmp_path / "out"),
                      env=cluster.env | {"PATH": os.environ["PATH"]})
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert "the cluster's `python` cannot run secondthought" in refused.stderr and "Nothing was sent" in refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "out").exists()
    finally:
        survivors = cluster.stop()
    assert not survivors, f"processes of the test's cluster outlived it: {survivors}"
