"""Flows run against an isolated Prefect API (prefect_test_harness) with isolated result storage."""
from __future__ import annotations

import os

import pytest

from flows.runtime import configure_prefect


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One temporary Prefect server + SQLite database for the whole test session.

    PREFECT_API_URL is also exported to the environment so Dask worker processes started by a test
    report to the same server instead of each starting their own.
    """
    configure_prefect()
    results = tmp_path_factory.mktemp("prefect-results")
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_RESULTS_LOCAL_STORAGE_PATH")}
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(results)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        yield PREFECT_API_URL.value()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
