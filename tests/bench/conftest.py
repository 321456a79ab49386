"""Fixtures of the bench tests: the same small prepared synthetic version the trainer tests use.

bench.prepared.prepare_small_version under the session's shared root: when tests/training ran first in
this session, the version is already prepared and this returns at once.
"""
from __future__ import annotations

import os

import pytest
import torch

from bench.prepared import SmallVersion, prepare_small_version


@pytest.fixture(scope="session")
def tiny_prepared_version(tmp_path_factory) -> SmallVersion:
    base = tmp_path_factory.getbasetemp()
    cache = os.environ.get("FER_TEST_CACHE") or str(base / "fer-cache")
    return prepare_small_version(base / "small-version", n=160, crop_size=64, cache=cache)


@pytest.fixture(autouse=True)
def _few_threads():
    """Two shared cores: keep torch to one thread in tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
