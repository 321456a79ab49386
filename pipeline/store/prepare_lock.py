"""The prepare lock: one prepare at a time per dataset and artefact root, an advisory lock file naming its holder.

Not the version lock (pipeline.contract.lock): this one only keeps two runs from writing one dataset at once.

The lock is `fcntl.flock` on `<artifacts>/<dataset>/.prepare.lock`, so the kernel releases it when the
holder exits in any way (a `kill -9` included): a stale file never blocks the next run. The file holds
the holder's pid, host and start time, which the refusal message quotes.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from pipeline.contract.errors import ConfigError

log = logging.getLogger(__name__)
LOCK_NAME = ".prepare.lock"
POLL_S = 0.2


def lock_path(artifacts: Path, dataset: str) -> Path:
    return Path(artifacts) / dataset / LOCK_NAME


def read_holder(path: Path) -> dict:
    """What the holder wrote into the lock file ({} when unreadable or not written yet)."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def _refusal(path: Path, what: str, wait_s: float) -> ConfigError:
    holder = read_holder(path)
    who = f"pid {holder.get('pid', 'unknown')}"
    if holder.get("host"):
        who += f" on {holder['host']}"
    if holder.get("started"):
        who += f", started {holder['started']}"
    waited = f" (waited {wait_s:g} s)" if wait_s else ""
    return ConfigError(f"another prepare of {what} is running ({who}; lock file {path}){waited}: wait for it to "
                       f"finish or stop it, or give lock_wait_s=SECONDS to wait")


class PrepareLock:
    """`with PrepareLock(artifacts, dataset, wait_s):` holds `<artifacts>/<dataset>/.prepare.lock` for the block;
    waits up to `wait_s` seconds for another holder, then refuses naming it (ConfigError)."""

    def __init__(self, artifacts: Path, dataset: str, wait_s: float = 0.0) -> None:
        self.path = lock_path(artifacts, dataset)
        self.what = f"{dataset!r} into {Path(artifacts)}"
        self.wait_s = wait_s
        self._handle = None

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        deadline = time.monotonic() + self.wait_s
        logged = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    raise _refusal(self.path, self.what, self.wait_s) from None
                if not logged:
                    log.info("waiting up to %g s for pid %s to finish its prepare of %s", self.wait_s,
                             read_holder(self.path).get("pid", "unknown"), self.what)
                    logged = True
                time.sleep(POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started":
                                 _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}))
        handle.flush()
        self._handle = handle
        return self.path

    def __exit__(self, *exc) -> None:
        handle, self._handle = self._handle, None
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
