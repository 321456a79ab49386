"""Scheduled runs: serve a deployment of the prepare flow against a running Prefect server.

Start the server first (`make server`: a real Prefect server on 127.0.0.1, SQLite, analytics off), then
`make serve DATASET=... CRON="0 3 * * *"` (or `python -m flows serve ... --interval 3600`). Each scheduled
run re-hashes the source through the stat cache; when nothing changed it ends quickly with the same version
id, otherwise it prepares the new version and reuses every per-image result already stored.

The served process runs one flow run at a time (`limit=1`): two runs of the same prepare would only
compete for the CPU and the same parts. Runs that come due meanwhile wait as Late and then run, each
ending at once when the version is complete. Task results persist under `<artifacts>/_prefect-results`
(as with `make prepare`), and shard tasks run on `config.max_workers` threads.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from pipeline.errors import ConfigError
from pipeline.prepare import PrepareConfig

log = logging.getLogger(__name__)

RUNS_AT_ONCE = 1     # flow runs one served process executes concurrently


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
                  interval: float | None = None) -> None:
    """Block serving the deployment `prepare/<name>` on the given schedule (Ctrl-C or SIGTERM stops it)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("scheduled runs need a Prefect server: run `make server` in another terminal and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api (the Makefile's `serve` target does)")
    _check_schedule(cron, interval)
    from pipeline.prepare import resolve_stage_configs
    from pipeline.versioning import artifacts_root

    from .prepare import prepare_flow
    from .runtime import configure_prefect, make_task_runner

    resolve_stage_configs(config)            # a bad option fails here, not at the first scheduled run
    configure_prefect(results_dir=artifacts_root() / "_prefect-results")   # inherited by the run processes
    flow = prepare_flow.with_options(task_runner=make_task_runner(config.max_workers))
    deployment = deployment_name(config, name)
    log.info("serving deployment prepare/%s (cron=%s, interval=%s) against %s", deployment, cron, interval,
             os.environ["PREFECT_API_URL"])
    flow.serve(name=deployment, cron=cron, interval=interval, limit=RUNS_AT_ONCE,
               parameters={"config": dataclasses.asdict(config)})
