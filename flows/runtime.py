"""Prefect runtime settings and task runners (local threads, a Dask LocalCluster, or a Dask cluster)."""
from __future__ import annotations

import logging
import os
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


@contextmanager
def api_for_workers(needed: bool):
    """Give Dask worker processes one Prefect API to report to.

    Without PREFECT_API_URL every worker process would start its own temporary server (seconds each);
    when `needed` and no URL is set, start one temporary server here and export its URL to the
    environment that LocalCluster workers inherit. A user-set PREFECT_API_URL is left alone.
    """
    if not needed or os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.logging.handlers import APILogHandler

        APILogHandler.flush()          # send the last task logs before the server goes away
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
