"""Real processes for the slow flow tests (`make server`, `make serve`, `dask scheduler`, `dask worker`).

Each is started in its own session (so it leads its own process group) with its output in a log file,
and always stopped on exit: SIGTERM, SIGKILL after a grace period, then whatever of its group outlived it.

    survivors = {}
    with started("server", command, env, log_path, survivors) as process:
        ...
    assert not any(survivors.values())
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    import psutil

    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def stop_group(process: subprocess.Popen, grace_s: float = 30.0) -> list[int]:
    """SIGTERM the process, SIGKILL its group after `grace_s`; returns the group's survivors (should be [])."""
    pgid = process.pid                       # start_new_session: the process leads its own group
    if process.poll() is None:
        os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            process.wait(10)
    if group_members(pgid):                  # children outliving their parent (flow runs, make's command)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(1.0)
    return group_members(pgid)


@contextmanager
def started(label: str, command: list[str], env: dict, log_path: Path, survivors: dict):
    """Popen in its own session with output to `log_path`; always stopped on exit (survivors[label])."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:
            survivors[label] = stop_group(process)
