"""No process left behind: a command's Ray ends with it, after a failure and after an interrupt."""

import os
import signal
import subprocess
import sys
import time

import pytest

from .processes import ProcessWatch

EXE = os.path.join(os.path.dirname(sys.executable), "secondthought")
TINY_SFT = ["--sft.model", "tiny-llama", "--sft.micro_batch_size", "4", "--sft.num_workers", "2",
            "--ray.num_cpus", "2"]


def watched(command: list[str], timeout: float, stop_when=None) -> tuple[ProcessWatch, str]:
    """Run ``command``, polling its descendants; SIGTERM it once ``stop_when()`` is true."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        watch = ProcessWatch(proc)
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            watch.poll()
            if stop_when is not None and stop_when():
                proc.send_signal(signal.SIGTERM)
                stop_when = None
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=120)
    return watch, stderr


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("processes") / "prepared"
    subprocess.run([EXE, "prepare", "--out", str(out), "--progress", "false", "--ray.num_cpus", "2"],
                   check=True, capture_output=True, timeout=600)
    return out


@pytest.mark.slow  # about 4.5 minutes; the interrupted command below checks the same in the default suite
def test_no_ray_process_outlives_a_command_after_a_recovered_failure(prepared, tmp_path):
    """A training worker dies abruptly at step 2; Ray Train restarts the group and the run finishes."""
    failed = tmp_path / "failed"
    watch, stderr = watched([EXE, "sft", "--prepared", str(prepared), "--out", str(failed), *TINY_SFT,
                             "--sft.max_steps", "4", "--sft.fault_injection_step", "2"], timeout=900)
    assert watch.proc.returncode == 0, stderr[-3000:]
    assert (failed / "fault-injected").exists() and (failed / "summary.json").exists()
    assert len(watch.titles) > 5, "the watch saw the command's Ray processes"
    assert not watch.survivors(), "processes of the command's Ray outlived it after a recovered failure"


def test_no_ray_process_outlives_an_interrupted_command(prepared, tmp_path):
    """Stopped (SIGTERM, as from a scheduler or `kill`) in the middle of training."""
    interrupted = tmp_path / "interrupted"
    watch, stderr = watched([EXE, "sft", "--prepared", str(prepared), "--out", str(interrupted), *TINY_SFT,
                             "--sft.epochs", "100", "--sft.log_every", "1"], timeout=900,
                            stop_when=lambda: (interrupted / "metrics.jsonl").exists())
    assert watch.proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and not (interrupted / "summary.json").exists()
    assert not watch.survivors(), "processes of the command's Ray outlived an interrupted run"


def test_end_processes_terminates_then_kills_only_what_it_is_given():
    import psutil

    from secondthought.runtime import end_processes

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stubborn.stdout.readline()  # its SIGTERM handler is set
        given = [psutil.Process(stubborn.pid), psutil.Process(polite.pid)]
        started = time.time()
        ended = end_processes(given, grace=1.0)
        # both outlived the grace period; the one that ignores SIGTERM needed the second grace and SIGKILL
        assert len(ended) == 2 and all("python" in title for title in ended)
        assert not any(p.is_running() for p in given) and time.time() - started >= 2.0
        assert bystander.poll() is None
    finally:
        for p in (stubborn, polite, bystander):
            p.kill()
            p.wait()
