"""Suite-wide test settings: every cache and artefact goes to a temporary folder."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def isolated_fer_dirs(tmp_path_factory, monkeypatch):
    """Point FER_CACHE, FER_ARTIFACTS, FER_MANIFESTS and FER_RUNS at per-session temp folders.

    The synthetic image cache is shared by the whole session (generation is deterministic), while
    artefacts and manifests stay per test so tests never see each other's versions.
    """
    cache = os.environ.get("FER_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "fer-cache")
    monkeypatch.setenv("FER_CACHE", cache)
    monkeypatch.setenv("FER_ARTIFACTS", str(tmp_path_factory.mktemp("artifacts")))
    monkeypatch.setenv("FER_MANIFESTS", str(tmp_path_factory.mktemp("manifests")))
    monkeypatch.setenv("FER_RUNS", str(tmp_path_factory.mktemp("runs")))   # run folders and the trainer's logs
    monkeypatch.delenv("FER_DATA_ROOT", raising=False)
    yield
