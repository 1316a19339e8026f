"""A Ray cluster of this machine's own, for the job and multi-node tests: a head started with
`ray start --head --block` on 127.0.0.1 (free ports, dashboard on 127.0.0.1), optionally a second node
joined to it (tests/ray_node.py), each in its own process group. ``stop`` ends exactly those processes
(never `ray stop`, which would end every Ray on the machine) and reports any that survived."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, logs: Path, auth_token: str | None = None, activated: bool = True):
        """``activated``: the head is started as the README says, with the project's environment active (its bin
        first in PATH); else as `.venv/bin/ray start --head` from a shell without it."""
        self.logs = logs
        path = os.environ.get("PATH", "")
        venv_bin = str(Path(sys.executable).parent)
        path = os.pathsep.join(p for p in path.split(os.pathsep) if p != venv_bin)
        self.env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                        PATH=f"{venv_bin}{os.pathsep}{path}" if activated else path)
        self.env.pop("VIRTUAL_ENV", None)
        if activated:
            self.env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
        self.env.pop("RAY_ADDRESS", None)
        if auth_token:
            self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=auth_token)
        else:
            self.env["RAY_AUTH_MODE"] = "disabled"
        self.nodes: list[subprocess.Popen] = []
        self.temp_dirs: list[str] = []
        self.gcs_port = self.dashboard_port = None

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, num_cpus: int, resources: dict | None = None) -> None:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        ports = {"--port": self.gcs_port, "--dashboard-port": self.dashboard_port,
                 "--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                 "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
                 "--metrics-export-port": free_port()}
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                   "--dashboard-host", "127.0.0.1", "--num-cpus", str(num_cpus),
                   "--resources", json.dumps(resources or {}), "--object-store-memory", str(300 * 2**20),
                   "--disable-usage-stats", *[str(x) for kv in ports.items() for x in kv]]
        self._start(command, "head")
        self.wait_nodes(1)

    def add_node(self, num_cpus: int, resources: dict | None = None) -> None:
        temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray puts unix sockets under it
        self.temp_dirs.append(temp_dir)
        command = [sys.executable, "-m", "tests.ray_node", "--address", f"127.0.0.1:{self.gcs_port}",
                   "--num-cpus", str(num_cpus), "--resources", json.dumps(resources or {}), "--temp-dir", temp_dir]
        self._start(command, f"node{len(self.nodes)}")
        self.wait_nodes(len(self.nodes))

    def _start(self, command: list[str], name: str) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.nodes.append(subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def alive_nodes(self) -> list[dict]:
        request = urllib.request.Request(f"{self.dashboard}/nodes?view=summary")
        if self.env.get("RAY_AUTH_TOKEN"):
            request.add_header("Authorization", f"Bearer {self.env['RAY_AUTH_TOKEN']}")
        with urllib.request.urlopen(request, timeout=5) as answer:
            summary = json.load(answer)["data"]["summary"]
        return [n for n in summary if n["raylet"]["state"] == "ALIVE"]

    def wait_nodes(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for proc in self.nodes:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Ray node exited ({proc.returncode}); see {self.logs}")
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the cluster did not reach {n} node(s) in {timeout} s; see {self.logs}")

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in self.nodes:
            try:
                root = psutil.Process(proc.pid)
                found += [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
        return found

    def listening(self) -> set[str]:
        """The addresses the cluster's processes listen on."""
        pids = {p.pid for p in self.processes()}
        return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.pid in pids}

    def stop(self, grace: float = 10) -> list[str]:
        """End every process of the cluster (by process group, then by the PIDs seen); the command lines of
        those still alive after that (there should be none)."""
        seen = self.processes()
        for proc in self.nodes:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(seen, timeout=grace)
        for proc in self.nodes:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        _, survivors = psutil.wait_procs(alive, timeout=grace)
        for proc in self.nodes:
            proc.wait(timeout=grace)
        for folder in self.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        return [" ".join(p.cmdline())[:100] for p in survivors if p.is_running() and p.status() != "zombie"]
