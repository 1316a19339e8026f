"""Watching the processes a command starts: what they listen on, and whether any outlives it."""

from __future__ import annotations

import subprocess
import threading
import time
from contextlib import contextmanager

import psutil


class ProcessWatch:
    """Polls the descendants of a command while it runs: their titles and their listening sockets.
    Processes are known by (pid, create_time), so a reused pid is never mistaken for one of ours."""

    def __init__(self, proc: subprocess.Popen | None = None, pid: int | None = None):
        """Watch a command started with ``proc``, or the process ``pid`` (e.g. this one, with its Ray)."""
        self.root = psutil.Process(proc.pid if proc else pid)
        self.proc = proc
        self.titles: dict[tuple[int, float], set[str]] = {}
        self.listening: set[tuple[str, int, tuple[int, float]]] = set()

    def poll(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        by_pid = {}
        for p in procs:
            try:
                key = (p.pid, p.create_time())
                # the command line carries Ray's full process title (name() is cut to 15 characters)
                self.titles.setdefault(key, set()).add(" ".join(p.cmdline()))
                by_pid[p.pid] = key
            except psutil.Error:
                continue
        try:
            connections = psutil.net_connections(kind="inet")
        except psutil.Error:
            return
        for c in connections:
            if c.status == "LISTEN" and c.pid in by_pid:
                self.listening.add((c.laddr.ip, c.laddr.port, by_pid[c.pid]))

    def wait(self, timeout: float, every: float = 0.5) -> tuple[str, str]:
        deadline = time.time() + timeout
        while self.proc.poll() is None and time.time() < deadline:
            self.poll()
            time.sleep(every)
        return self.proc.communicate(timeout=60)

    @contextmanager
    def polling(self, every: float = 0.5):
        """Poll in a background thread for the duration of the block."""
        done = threading.Event()

        def loop():
            while not done.wait(every):
                self.poll()

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()

    def survivors(self, grace: float = 10.0) -> list[str]:
        """Descendants seen while the command ran that are still alive ``grace`` seconds after it ended."""
        deadline = time.time() + grace
        while True:
            alive = []
            for (pid, created), titles in self.titles.items():
                if pid == self.root.pid:
                    continue
                try:
                    p = psutil.Process(pid)
                    if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{pid} {sorted(titles)[0][:80]}")
                except psutil.Error:
                    continue
            if not alive or time.time() > deadline:
                return alive
            time.sleep(0.5)
