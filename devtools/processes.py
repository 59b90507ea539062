"""Start and stop the throw-away servers of tests, benchmarks and the local cluster
(SeaweedFS, Orthanc): a process in its own session, logging to a file, waited for until
it answers, stopped with its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie child of ours (one is reaped here)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:  # not our child: it exists
        return True


def start_until_ready(
    command: list[str],
    *,
    log_path: Path,
    ready: Callable[[], bool],
    name: str,
    timeout: float,
    on_timeout: Callable[[int], None],
    interval: float = 0.2,
) -> int:
    """Start ``command`` in its own session, output appended to ``log_path``, and wait
    until ``ready()``; returns its pid. A process that exits first, or does not answer
    within ``timeout`` (then ``on_timeout(pid)`` stops it), raises with the log's path."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}); see {log_path}")
        if time.monotonic() > deadline:
            on_timeout(proc.pid)
            raise RuntimeError(f"{name} did not answer within {timeout:.0f} s; see {log_path}")
        time.sleep(interval)
    return proc.pid


def stop_group(pid: int, sig: int, *, timeout: float = 30.0) -> None:
    """Send ``sig`` to the process group of ``pid``, wait up to ``timeout`` for the
    process to end, then SIGKILL the group."""
    if not pid:
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
