"""`secondthought submit`: send a stage or the whole pipeline to a running Ray cluster as a Ray job (the Job
Submission API, as `ray job submit` does), follow its logs, and exit with its final status; `status`,
`logs`, `stop` and `list` for jobs already sent.

Before anything is sent it checks what commonly goes wrong on a cluster: the stage's config parses; the
run directory is an absolute path (a relative one would land in the job's temporary copy of the
working_dir); the working_dir after excludes fits under Ray's upload cap; and the cluster has nodes on
which what the stage asks for can be placed (a placement group asking for GPUs that no node has waits
forever). Inside the job each stage then checks that every node sees the run directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from jobs.demand import asks, unmet
from secondthought import console
from secondthought.config import ConfigError

RUNTIME_ENV = Path(__file__).with_name("runtime_env.yaml")
ACTIONS = ("status", "logs", "stop", "list")
EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
"""Exit status of `secondthought submit` by the job's final status (a job still running when we stop
following it: 0 with --no-wait)."""


@dataclass
class Job:
    """What is sent: the arguments of ``JobSubmissionClient.submit_job``."""

    entrypoint: str
    runtime_env: dict
    submission_id: str | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    metadata: dict = field(default_factory=dict)


def address(given: str | None) -> str:
    """The cluster's dashboard address: ``--address``, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS."""
    found = given or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not found:
        raise ConfigError("no cluster given: pass --address http://HEAD:8265 (the head's dashboard), or set "
                          "RAY_API_SERVER_ADDRESS or RAY_ADDRESS")
    return found


def build(stage_argv: list[str], runtime_env_file: str | Path = RUNTIME_ENV, cwd: Path | None = None,
          submission_id: str | None = None, num_cpus: float | None = None,
          num_gpus: float | None = None) -> tuple[Job, str, dict, Upload | None]:
    """The job for ``secondthought STAGE ARGS...``, its stage name, its parsed config sections and the bytes
    of its working_dir upload; ConfigError for a stage that cannot run as a job, a run directory the cluster
    could not keep or an upload over Ray's cap."""
    from secondthought.cli import COMMANDS, parse_stage

    cwd = (cwd or Path.cwd()).resolve()
    if not stage_argv:
        raise ConfigError("say what to run after --, e.g. `secondthought submit -- pipeline --out /shared/runs/a`")
    name = stage_argv[0]
    runnable = [n for n, c in COMMANDS.items() if c.job]
    if name not in runnable:
        hint = (": a server runs until stopped; deploy it with the RayService in cluster/ or `serve deploy "
                "serve/config.yaml`") if name == "serve" else ""
        raise ConfigError(f"{name!r} cannot be submitted as a job{hint}; stages that can: {', '.join(runnable)}")
    _, args, sections = parse_stage(stage_argv)  # as given, relative to here: the config parses
    runtime_env = load_runtime_env(runtime_env_file, cwd)
    working_dir = Path(runtime_env["working_dir"]) if "working_dir" in runtime_env else None
    upload = check_upload(working_dir, runtime_env.get("excludes", [])) if working_dir else None
    argv = _portable(stage_argv[1:], cwd, working_dir)
    if not Path(str(args.out)).is_absolute():
        raise ConfigError(f"--out {args.out}: give an absolute path on storage the cluster keeps (e.g. "
                          "/mnt/shared/runs/NAME); a relative one would be written into the job's temporary copy "
                          "of the working_dir and lost")
    if not any(a == "--ray.address" or a.startswith("--ray.address=") for a in argv):
        argv += ["--ray.address", "auto"]  # the job joins the cluster it runs on (RAY_ADDRESS is set for it)
    job = Job(entrypoint=shlex.join(["python", "-m", "secondthought.cli", name, *argv]), runtime_env=runtime_env,
              submission_id=submission_id, entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus,
              metadata={"secondthought_stage": name})
    return job, name, sections, upload


def _portable(argv: list[str], cwd: Path, working_dir: Path | None) -> list[str]:
    """``argv`` with each --config file named where the job will find it."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            out += ["--config", _config_path(argv[i + 1], cwd, working_dir)]
            i += 2
            continue
        arg = argv[i]
        if arg.startswith("--config="):
            arg = "--config=" + _config_path(arg.split("=", 1)[1], cwd, working_dir)
        out.append(arg)
        i += 1
    return out


def _config_path(value: str, cwd: Path, working_dir: Path | None) -> str:
    """A config file inside the working_dir travels with the job: named relative to it. Elsewhere it must be
    an absolute path, on storage the cluster shares."""
    path = (cwd / value).resolve()
    if not path.is_file():
        raise ConfigError(f"--config {value}: no such file")
    if working_dir is not None and path.is_relative_to(working_dir):
        return str(path.relative_to(working_dir))
    if not Path(value).is_absolute():
        raise ConfigError(f"--config {value}: the file is outside the working_dir that travels with the job "
                          f"({working_dir}); put it there, or give an absolute path on storage the cluster shares")
    return value


def runtime_env_problem(env: dict) -> str | None:
    """What is wrong with a runtime_env for Ray: a key Ray does not know (RuntimeEnv would take it for a
    plugin's and ignore it) or a value its RuntimeEnv refuses."""
    from ray.runtime_env import RuntimeEnv

    if not isinstance(env, dict):
        return f"expected a mapping of runtime_env fields, got {type(env).__name__}"
    unknown = sorted(set(env) - set(RuntimeEnv.known_fields))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} (Ray's are {', '.join(sorted(RuntimeEnv.known_fields))})"
    try:
        RuntimeEnv(**env)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


SECRETS = (".env*", ".ssh/", ".aws/", ".azure/", ".kube/", ".docker/", ".config/gcloud/", "*.pem", "*.key", "*.p12",
           ".netrc", ".pgpass", ".git-credentials", ".npmrc", ".pypirc", "credentials", "credentials.json",
           "*credentials*.json", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.tfstate", "secrets.y*ml")
"""Never uploaded with a job, whatever the runtime_env's excludes say (gitignore patterns: at any depth)."""


def load_runtime_env(file: str | Path, cwd: Path) -> dict:
    """A runtime_env YAML (Ray's own keys, checked by Ray's RuntimeEnv), working_dir made absolute: relative to the
    file's own folder, so that the project's file names the project's root wherever `submit` runs (``cwd`` is not
    used for it: run from a home folder, a working_dir of "." took the home folder with it). Files that hold
    secrets are excluded whatever the file says (:data:`SECRETS`)."""
    file = Path(file)
    if not file.is_file():
        raise ConfigError(f"--runtime-env {file}: no such file")
    env = yaml.safe_load(file.read_text()) or {}
    if problem := runtime_env_problem(env):
        raise ConfigError(f"--runtime-env {file}: {problem}")
    if "working_dir" in env and "://" not in str(env["working_dir"]):
        working_dir = (file.resolve().parent / env["working_dir"]).resolve()
        if not working_dir.is_dir():
            raise ConfigError(f"--runtime-env {file}: working_dir {working_dir} is not a folder")
        env["working_dir"] = str(working_dir)
        env["excludes"] = list(env.get("excludes") or []) + [s for s in SECRETS if s not in (env.get("excludes") or [])]
    return env


@dataclass
class Upload:
    """What the working_dir upload holds after excludes: bytes, and files and bytes under each top-level entry."""

    total: int
    by_top: dict[str, tuple[int, int]]

    def shown(self) -> dict[str, str]:
        return {top: f"{files} file{'s' * (files != 1)}, {size / 2**20:.2f} MiB"
                for top, (files, size) in sorted(self.by_top.items(), key=lambda kv: -kv[1][1])}


def upload_size(working_dir: Path, excludes: list[str]) -> Upload:
    """What Ray would upload from ``working_dir`` (its own walk: the excludes and .gitignore / .rayignore files)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    by_top: dict[str, tuple[int, int]] = {}

    def count(path: Path) -> None:
        if path.is_file() and not path.is_symlink():
            top = path.relative_to(working_dir).parts[0]
            files, size = by_top.get(top, (0, 0))
            by_top[top] = (files + 1, size + path.stat().st_size)

    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    quiet = logging.getLogger("secondthought.upload")  # Ray's walk logs each ignore file it meets at INFO
    quiet.setLevel(logging.WARNING)
    _dir_travel(working_dir, [_get_excludes(working_dir, excludes)], count, include_gitignore=include_gitignore,
                logger=quiet)
    return Upload(sum(size for _, size in by_top.values()), by_top)


def check_upload(working_dir: Path, excludes: list[str]) -> Upload:
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    upload = upload_size(working_dir, excludes)
    if upload.total >= GCS_STORAGE_MAX_SIZE:
        biggest = sorted(upload.by_top.items(), key=lambda kv: -kv[1][1])[:5]
        raise ConfigError(
            f"the working_dir {working_dir} holds {upload.total / 2**20:.0f} MiB after excludes: over Ray's upload cap "
            f"of {GCS_STORAGE_MAX_SIZE / 2**20:.0f} MiB. Largest: "
            + ", ".join(f"{name} {size / 2**20:.0f} MiB" for name, (_, size) in biggest)
            + ". Add them to `excludes` in the runtime_env file (checkpoints, data and models belong on shared "
              "storage, not in the upload)")
    return upload


def cluster_nodes(dashboard: str) -> list[dict]:
    """Total resources of each alive node."""
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    except Exception as e:  # connection refused, wrong address, authentication: Ray's message says which
        raise ConfigError(f"cannot reach the cluster at {dashboard}: {type(e).__name__}: {e}") from None
    return [dict(n.resources_total) for n in nodes]


def check_resources(sections: dict, nodes: list[dict]) -> list[str]:
    """What of the stage cannot be placed on ``nodes``."""
    cpus = sum(n.get("CPU", 0) for n in nodes)
    return [problem for ask in asks(sections, cpus) if (problem := unmet(ask, nodes))]


def client(dashboard: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(dashboard)
    except Exception as e:  # connection refused, wrong address, authentication: Ray's message says which
        raise ConfigError(f"cannot reach the cluster at {dashboard}: {type(e).__name__}: {e}") from None


def submit(job: Job, jobs) -> str:
    """Send ``job`` with the JobSubmissionClient ``jobs``; its submission id."""
    return jobs.submit_job(**asdict(job))


PROBE = "python -c 'import secondthought.cli'"
"""A job's entrypoint runs `python` from the head's PATH, which need not be the interpreter Ray's workers run (a head
started as `.venv/bin/ray start --head` without the venv active runs jobs on the system's Python)."""


def check_interpreter(jobs, runtime_env: dict, timeout_s: float = 300) -> None:
    """Refuses to send a job the cluster's `python` cannot run, saying why: a probe job imports the CLI there."""
    from ray.job_submission import JobStatus

    probe = jobs.submit_job(entrypoint=PROBE, runtime_env=runtime_env, metadata={"secondthought_probe": "python"})
    deadline = time.monotonic() + timeout_s
    while (status := jobs.get_job_status(probe)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.monotonic() > deadline:
            jobs.stop_job(probe)
            raise ConfigError(f"the cluster did not run a probe job ({PROBE}) within {timeout_s:.0f} s: is it busy? "
                              "Nothing was sent")
        time.sleep(0.5)
    if status != JobStatus.SUCCEEDED:
        said = (jobs.get_job_logs(probe).strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"the cluster's `python` cannot run secondthought ({said}): a job runs `python` from the "
                          "head's PATH. Start the head with the project's environment active (`source "
                          ".venv/bin/activate && ray start --head ...`) or use an image that has secondthought "
                          "installed (cluster/Dockerfile). Nothing was sent")


def follow(jobs, submission_id: str, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; its final status."""

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(submission_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return str(jobs.get_job_status(submission_id).value)


def describe(job: Job, upload: Upload | None) -> str:
    """The job as sent, and what its working_dir upload holds by top-level folder."""
    shown = {k: v for k, v in asdict(job).items() if v not in (None, {}, [])}
    if upload is not None:
        shown["working_dir_upload_mib"] = round(upload.total / 2**20, 2)
        shown["working_dir_upload"] = upload.shown()
    return json.dumps(shown, indent=2)


def action(what: str, rest: list[str], dashboard: str, out=sys.stdout) -> int:
    """``status ID``, ``logs ID``, ``stop ID`` or ``list``."""
    jobs = client(dashboard)
    if what == "list":
        for info in sorted(jobs.list_jobs(), key=lambda i: i.start_time or 0):
            out.write(f"{info.submission_id or info.job_id}\t{info.status.value}\t{info.entrypoint}\n")
        return 0
    if len(rest) != 1:
        raise ConfigError(f"`secondthought submit {what} ID` takes one submission id, got {rest or 'none'}")
    submission_id = rest[0]
    try:
        if what == "status":
            info = jobs.get_job_info(submission_id)
            out.write(f"{submission_id}: {info.status.value}{': ' + info.message if info.message else ''}\n")
            return EXIT.get(info.status.value, 0)
        if what == "logs":
            out.write(jobs.get_job_logs(submission_id))
            return 0
        stopped = jobs.stop_job(submission_id)
        out.write(f"{submission_id}: {'stop requested' if stopped else 'not running, nothing to stop'}\n")
        return 0
    except RuntimeError as e:  # the Job API's answer for an unknown id
        raise ConfigError(f"{what} {submission_id}: {e}") from None


def main(args, sections: dict) -> int:
    """`secondthought submit`: send a job and follow it, or look after jobs already sent."""
    what, rest = (args.job[0], args.job[1:]) if args.job else ("", [])
    if what in ACTIONS:
        return action(what, rest, address(args.address))
    job, _, sections, upload = build(args.job, args.runtime_env or RUNTIME_ENV, submission_id=args.submission_id,
                                     num_cpus=args.entrypoint_num_cpus, num_gpus=args.entrypoint_num_gpus)
    if args.dry_run:
        console.say(describe(job, upload))
        return 0
    dashboard = address(args.address)
    if not args.skip_resource_check:
        problems = check_resources(sections, cluster_nodes(dashboard))
        if problems:
            raise ConfigError("the job would wait forever for resources no node has:\n  " + "\n  ".join(problems)
                              + "\n(on a cluster that starts such nodes on demand, pass --skip-resource-check)")
    jobs = client(dashboard)
    check_interpreter(jobs, job.runtime_env)
    submission_id = submit(job, jobs)
    console.say(f"submitted {submission_id} to {dashboard}: {job.entrypoint}")
    if args.no_wait:
        console.say(f"follow it with: secondthought submit --address {dashboard} logs {submission_id}")
        return 0
    try:
        status = follow(jobs, submission_id)
    except KeyboardInterrupt:
        console.say(f"stopped following; the job goes on. Stop it with: secondthought submit --address {dashboard} "
            f"stop {submission_id}")
        return 130
    console.say(f"{submission_id}: {status}")
    return EXIT.get(status, 1)
