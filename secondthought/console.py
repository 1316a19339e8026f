"""The terminal: the project's own progress lines and errors. Everything else a command prints (Ray,
DeepSpeed, transformers, and the Ray workers, whose output the driver prints) goes to the command's log
file while :func:`captured` is active, and also to the terminal with ``--verbose``.

Capturing works on file descriptors 1 and 2, not only on ``sys.stdout``: Ray's own processes inherit them,
and C++ logging writes to them directly.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, TextIO

_terminal: tuple[TextIO, TextIO] | None = None  # (out, err) of the real terminal while capturing quietly


def say(line: str, err: bool = False) -> None:
    """One line of the project's own output: on the terminal and, while capturing, in the log."""
    if _terminal is not None:
        stream = _terminal[err]
        stream.write(line + "\n")
        stream.flush()
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def terminal() -> TextIO:
    """Where a progress bar should draw (the real stderr, also while capturing)."""
    return _terminal[1] if _terminal is not None else sys.stderr


def quiet() -> bool:
    """Whether the output of other processes (Ray workers) is kept off the terminal now."""
    return _terminal is not None


@contextlib.contextmanager
def captured(log: Path, verbose: bool) -> Iterator[None]:
    """Send everything written to fds 1 and 2, by this process and those it starts, to ``log``; with
    ``verbose`` also to the terminal, otherwise only :func:`say` and :func:`terminal` reach it."""
    global _terminal
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    tee = None
    if verbose:
        read_end, target = os.pipe()
        tee = threading.Thread(target=_copy, args=(read_end, (log_fd, saved[0])), daemon=True)
        tee.start()
    else:
        target = log_fd
        _terminal = (os.fdopen(os.dup(saved[0]), "w"), os.fdopen(os.dup(saved[1]), "w"))
    os.dup2(target, 1), os.dup2(target, 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        if _terminal is not None:
            for stream in _terminal:
                stream.close()
            _terminal = None
        if tee is not None:
            os.close(target)
            tee.join(timeout=5)  # ends at end of file, once no process holds the pipe any more
        os.close(log_fd), os.close(saved[0]), os.close(saved[1])


def _copy(read_end: int, targets: tuple[int, ...]) -> None:
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            for fd in targets:
                with contextlib.suppress(OSError):
                    os.write(fd, chunk)
