"""The console: the project's own lines on the terminal, everything else in the log (and on the terminal
with --verbose), including what child processes write to the inherited file descriptors."""

import subprocess
import sys

import pytest

SCRIPT = """
import subprocess, sys, warnings
from pathlib import Path
from secondthought.console import captured, say

with captured(Path(sys.argv[1]), verbose=sys.argv[2] == "1"):
    say("progress: step 1/2")
    print("a library prints", flush=True)
    warnings.warn("a deprecation warning")
    subprocess.run(["sh", "-c", "echo a child process writes; echo and its errors >&2"], check=True)
    say("error: shown", err=True)
print("after the block")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_quiet_by_default_everything_in_the_log(tmp_path, verbose):
    log = tmp_path / "run.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log), str(int(verbose))], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    noise = ["a library prints", "a deprecation warning", "a child process writes", "and its errors"]
    ours = ["progress: step 1/2", "error: shown"]
    for line in ours + noise:
        assert line in log.read_text()
    for line in ours + ["after the block"]:
        assert terminal.count(line) == 1, (line, terminal)
    assert "after the block" not in log.read_text()
    assert "error: shown" in (done.stdout if verbose else done.stderr)
    for line in noise:
        assert (line in terminal) == verbose, (line, terminal)
