"""Scheduled runs: serve a deployment of the prepare flow against a running Prefect server.

Start the server first (`make server`: a real Prefect server on 127.0.0.1, SQLite, analytics off), then
`make serve DATASET=... CRON="0 3 * * *"` (or `python -m flows serve ... --interval 3600`). Each scheduled
run re-hashes the source through the stat cache; when nothing changed it ends quickly with the same version
id, otherwise it prepares the new version and reuses every per-image result already stored.

The served process runs one flow run at a time (`limit=1`): two runs of the same prepare would only
compete for the CPU and the same parts. Runs that come due meanwhile wait as Late and then run, each
ending at once when the version is complete. Task results persist under `<artifacts>/_prefect-results`
(as with `make prepare`), and shard tasks run on `config.max_workers` threads.

Watch (`--watch PATH`): besides the schedule, a thread polls a stat signature of PATH (a label file such
as AffectNet's `Manually_Annotated_file_lists/`, RAF-DB's `EmoLabel/list_patition_label.txt`, or a
folder dataset's root: the name, size and mtime of a file, or of a folder's direct entries, whose own
mtimes change when files are added to or removed from them) and starts a run of the deployment when
the signature changed and then held still for one poll (so a copy in progress is not prepared half-way).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path

from pipeline.config import PrepareConfig
from pipeline.contract.errors import ConfigError

log = logging.getLogger(__name__)

RUNS_AT_ONCE = 1     # flow runs one served process executes concurrently
WATCH_TAG = "watch"  # tag of the runs a watched change started


def path_signature(path: str | Path) -> tuple:
    """(name, size, mtime_ns) of a file, or of each direct entry of a folder (sorted); () when missing."""
    path = Path(path)
    try:
        if not path.is_dir():
            stat = path.stat()
            return ((path.name, stat.st_size, stat.st_mtime_ns),)
        entries = []
        for entry in os.scandir(path):
            try:
                stat = entry.stat(follow_symlinks=True)
            except FileNotFoundError:      # removed (or a dangling link) while listing: the folder's mtime says so
                continue
            entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
        return (("", 0, path.stat().st_mtime_ns), *sorted(entries))
    except FileNotFoundError:
        return ()


class ManifestWatch(threading.Thread):
    """Start a run of deployment `flow/deployment` when `path`'s signature changes and then holds still."""

    def __init__(self, path: str | Path, deployment: str, every_s: float = 30.0):
        super().__init__(name=f"watch {path}", daemon=True)
        self.path, self.deployment, self.every_s = Path(path), deployment, every_s
        self.stopped = threading.Event()
        self.triggered = 0
        self._prepared = self._previous = path_signature(self.path)   # the schedule's runs see this state

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.poll()

    def poll(self) -> bool:
        """One check; starts a run (and returns True) when a change has held still since the last check."""
        current = path_signature(self.path)
        settled = current == self._previous and current != self._prepared
        self._previous = current
        if settled:
            self._prepared = current
            self._start_run()
        return settled

    def _start_run(self) -> None:
        from prefect.deployments import run_deployment

        try:
            run = run_deployment(self.deployment, timeout=0, as_subflow=False, tags=[WATCH_TAG])
            self.triggered += 1
            log.info("%s changed: started run %s of %s", self.path, run.name, self.deployment)
        except Exception as exc:    # the server may be restarting: the next change or poll tries again
            log.warning("%s changed but starting %s failed: %s", self.path, self.deployment, exc)


def pipeline_logs_to_run(flow, flow_run, state) -> None:
    """on_running hook of served runs: the pipeline's INFO records (the version id, what was computed) go
    to the run's logs in the Prefect API and the served process's terminal.

    A served run executes in a freshly spawned process where no handler of this project is set up: the
    `pipeline` logger would fall back to the root logger's WARNING level and Prefect's handlers would
    never see it. Same wiring as Prefect's PREFECT_LOGGING_EXTRA_LOGGERS (the `prefect.extra` handlers),
    plus the INFO level.
    """
    logger = logging.getLogger("pipeline")
    logger.setLevel(logging.INFO)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in logger.handlers:
            logger.addHandler(handler)


def served_flow(config: PrepareConfig):
    """The prepare flow as a deployment serves it: the runner cloudpickles this object into each run's
    freshly spawned process (tests/flows/test_schedule.py validates parameters there the same way)."""
    from flows.prepare import prepare_flow
    from flows.runtime import make_task_runner

    return prepare_flow.with_options(task_runner=make_task_runner(config.max_workers),
                                     on_running=[pipeline_logs_to_run])


def deployment_name(config: PrepareConfig, name: str | None = None) -> str:
    """The deployment's name: `name`, or `prepare-<dataset>` (full name `prepare/prepare-<dataset>`)."""
    return name or f"prepare-{config.dataset}"


def _check_schedule(cron: str | None, interval: float | None) -> None:
    if (cron is None) == (interval is None):
        raise ConfigError(f"give exactly one of cron or interval (got cron={cron!r}, interval={interval!r})")
    if interval is not None and interval <= 0:
        raise ConfigError(f"interval must be a positive number of seconds, got {interval!r}")
    if cron is not None:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=cron)
        except ValueError as exc:    # pydantic's ValidationError is a ValueError
            raise ConfigError(f"cron schedule {cron!r} is not valid; e.g. '0 3 * * *' (03:00 every day)") from exc


def serve_prepare(config: PrepareConfig, name: str | None = None, cron: str | None = None,
                  interval: float | None = None, watch: str | Path | None = None,
                  watch_every_s: float = 30.0) -> None:
    """Block serving the deployment `prepare/<name>` on the given schedule (Ctrl-C or SIGTERM stops it).

    `watch`: also start a run when this file or folder changes (polled every `watch_every_s` seconds).
    """
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("scheduled runs need a Prefect server: run `make server` in another terminal and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api (the Makefile's `serve` target does)")
    _check_schedule(cron, interval)
    if watch is not None and not Path(watch).exists():
        raise ConfigError(f"watched path {watch} does not exist; give the dataset's label file or folder")
    if watch_every_s <= 0:
        raise ConfigError(f"watch_every_s must be a positive number of seconds, got {watch_every_s!r}")
    from flows.runtime import configure_prefect
    from pipeline.config import resolve_stage_configs
    from pipeline.contract.lock import artifacts_root

    resolve_stage_configs(config)            # a bad option fails here, not at the first scheduled run
    configure_prefect(results_dir=artifacts_root() / "_prefect-results")   # inherited by the run processes
    flow = served_flow(config)
    deployment = deployment_name(config, name)
    log.info("serving deployment prepare/%s (cron=%s, interval=%s, watch=%s) against %s", deployment, cron,
             interval, watch, os.environ["PREFECT_API_URL"])
    if watch is not None:
        ManifestWatch(watch, f"{flow.name}/{deployment}", watch_every_s).start()
    flow.serve(name=deployment, cron=cron, interval=interval, limit=RUNS_AT_ONCE,
               parameters={"config": dataclasses.asdict(config)})
