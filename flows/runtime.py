"""Prefect runtime: settings, task runners (threads, a Dask LocalCluster or cluster), the temporary API server
of a run, and the cleanup of what a killed run left behind."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

# Settings that must hold before Prefect reads them: no telemetry from this closed network, and no
# per-flow heartbeat thread (it costs about a second per flow run).
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",   # a loaded 2-core machine needs more than 20 s
}
log = logging.getLogger(__name__)


def configure_prefect(results_dir: Path | None = None) -> None:
    """Set Prefect defaults in the environment (user-set values win); persist task results under results_dir."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(results_dir))


def make_task_runner(max_workers: int = 2, dask_address: str | None = None, dask_workers: int = 0):
    """Threads on this machine by default; `dask_address` uses an existing Dask cluster
    (tcp://HOST:PORT, workers must have this project installed); `dask_workers` starts a LocalCluster."""
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max_workers)


OWNER_ENV = "FER_RUN_OWNER"          # inherited by every process a run starts (server, Dask workers)
RUNS_DIR = "_prefect/runs"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # someone else's process
        return True
    return True


def _started_by(owner: int) -> list[int]:
    """Live processes whose environment says run `owner` started them (a server, Dask workers)."""
    marker = f"{OWNER_ENV}={owner}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), owner):
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stop_pids(pids: list[int], grace_s: float = 5.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def reap_stale_runs(artifacts: Path) -> list[int]:
    """Stop what a killed run left behind: its temporary Prefect server and worker processes.

    Each run is recorded in `<artifacts>/_prefect/runs/<owner pid>.json` while it lasts, and every process
    it starts inherits FER_RUN_OWNER=<owner pid>; a record whose owner is gone (kill -9) names processes
    to stop. Returns the pids stopped.
    """
    stopped: list[int] = []
    for record_path in sorted((Path(artifacts) / RUNS_DIR).glob("*.json")):
        try:
            owner = int(json.loads(record_path.read_text())["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            record_path.unlink(missing_ok=True)
            continue
        if owner != os.getpid() and _alive(owner):
            continue
        left = _started_by(owner)
        if left:
            log.warning("stopping %d processes (%s) left behind by prepare pid %d", len(left),
                        ", ".join(map(str, left)), owner)
            _stop_pids(left)
            stopped += left
        record_path.unlink(missing_ok=True)
    return stopped


@contextmanager
def run_record(artifacts: Path):
    """Record this run (and mark the processes it starts) so the next run can clean up after a kill."""
    reap_stale_runs(artifacts)
    record_path = Path(artifacts) / RUNS_DIR / f"{os.getpid()}.json"
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps({"owner": os.getpid(), "started": time.time()}))
    previous = os.environ.get(OWNER_ENV)
    os.environ[OWNER_ENV] = str(os.getpid())
    try:
        yield record_path
    finally:
        if previous is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = previous
        record_path.unlink(missing_ok=True)


def flush_api_logs() -> None:
    """Send the log records Prefect's API handlers still hold (blocks until sent)."""
    from prefect.logging.handlers import APILogHandler

    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.extra", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, APILogHandler):
                try:
                    handler.flush()
                except Exception as exc:     # noqa: BLE001 - the server may be gone already
                    log.debug("flushing Prefect API logs failed: %s", exc)


def interrupt_on_terminate():
    """From now on SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, so every `finally` (the
    temporary server's stop among them) runs, as on Ctrl-C. Returns the function that restores the previous
    handlers (a no-op outside the main thread, where nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]


@contextmanager
def temporary_api():
    """One temporary Prefect server for this run, unless PREFECT_API_URL names one already.

    The URL is exported to the environment, so Dask LocalCluster workers report to this server instead
    of each starting their own. Use inside `run_record`, so a killed run's server is found and stopped.
    The server is stopped on every way out of the block: a return, an error, Ctrl-C, SIGTERM or SIGHUP
    (interrupt_on_terminate); only a SIGKILL leaves it to the next run's `reap_stale_runs`.
    """
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    restore_signals = interrupt_on_terminate()
    try:
        server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")))
        os.environ["PREFECT_API_URL"] = server.api_url
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        flush_api_logs()               # send the last task logs before the server goes away
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
        restore_signals()
