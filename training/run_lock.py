"""One trainer per run folder: an advisory lock file naming its holder, as the prepare holds its dataset.

`fcntl.flock` on `<run folder>/.train.lock`: the kernel releases it when the holder exits in any way (a
`kill -9` included), so a stale file never blocks the next run. The file holds the holder's pid, host and
start time, which the refusal quotes. A second trainer given the same `runtime.run_id` (or resuming a run
that is still training) refuses at once instead of interleaving its metrics into the same files.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
from pathlib import Path

from pipeline.contract.errors import ConfigError

LOCK_NAME = ".train.lock"


def read_holder(path: Path) -> dict:
    """What the holder wrote into the lock file ({} when unreadable or not written yet)."""
    try:
        holder = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """The held lock of one run folder; `release()` (or process exit) frees it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            holder = read_holder(self.path)
            who = f"pid {holder.get('pid', 'unknown')}"
            if holder.get("host"):
                who += f" on {holder['host']}"
            if holder.get("started"):
                who += f", started {holder['started']}"
            raise ConfigError(f"run folder {run_dir} is in use by another trainer ({who}; lock file {self.path}): "
                              f"give another runtime.run_id, or wait for that run to finish") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started":
                                       _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}))
        self._handle.flush()

    def release(self) -> None:
        if self._handle.closed:
            return
        self._handle.seek(0)
        self._handle.truncate()
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
