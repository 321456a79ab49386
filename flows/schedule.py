"""Scheduled runs: serve a deployment of the prepare flow against a running Prefect server.

Start the server first (`make server`: a real Prefect server on 127.0.0.1, SQLite, analytics off), then
`make serve DATASET=... CRON="0 3 * * *"`. Each scheduled run re-hashes the source through the stat cache;
when nothing changed it ends quickly with the same version id, otherwise it prepares the new version and
reuses every per-image result already stored.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from pipeline.errors import ConfigError
from pipeline.prepare import PrepareConfig

log = logging.getLogger(__name__)


def serve_prepare(config: PrepareConfig, name: str | None = None, cron: str | None = None,
                  interval: float | None = None) -> None:
    """Block serving the deployment `prepare/<name>` on the given schedule (Ctrl-C stops it)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("scheduled runs need a Prefect server: run `make server` in another terminal and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api (the Makefile's `serve` target does)")
    from .prepare import prepare_flow

    deployment = name or f"prepare-{config.dataset}"
    log.info("serving deployment %s (cron=%s, interval=%s)", deployment, cron, interval)
    prepare_flow.serve(name=deployment, cron=cron, interval=interval,
                       parameters={"config": dataclasses.asdict(config)})
