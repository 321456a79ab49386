"""Shared fixtures of the trainer tests (also used by the LA-Net, SOFT and LDLVA test files here).

`tiny_prepared_version` is one small version of the synthetic dataset per session, built by the real
prepare (bench.prepared.prepare_small_version: 160 samples, given boxes, provided 68 points, estimated
AUs, exact KNN graphs, 64x64 crops, label variants `clean` and `sym-0.30`). Tests read it through
`training.data.PreparedVersion.open(..., artifacts_root=, manifests_root=)` or by setting FER_ARTIFACTS /
FER_MANIFESTS (see `tiny_env`). Never write into it. `needs_va` skips a test while the synthetic
source carries no valence-arousal (so the prepare writes no `va` graph).
"""
from __future__ import annotations

import os

import pytest
import torch

from bench.prepared import SmallVersion, prepare_small_version

TINY_SAMPLES = 160
TINY_CROP = 64      # stored crop side
TINY_IMAGE = 56     # random crop side fed to the network


def small_version_root(tmp_path_factory) -> tuple:
    """(root, image cache) shared by every test directory, so one session prepares one version."""
    base = tmp_path_factory.getbasetemp()
    cache = os.environ.get("FER_TEST_CACHE") or str(base / "fer-cache")
    return base / "small-version", cache


@pytest.fixture(scope="session")
def tiny_prepared_version(tmp_path_factory) -> SmallVersion:
    """A read-only small prepared version (fields: dataset, version, artifacts_root, manifests_root, ...)."""
    root, cache = small_version_root(tmp_path_factory)
    return prepare_small_version(root, n=TINY_SAMPLES, crop_size=TINY_CROP, cache=cache)


@pytest.fixture
def needs_va(tiny_prepared_version) -> None:
    if "va" not in tiny_prepared_version.graphs:
        pytest.skip("the synthetic source has no valence-arousal yet (second generator), so no `va` graph")


@pytest.fixture
def tiny_env(tiny_prepared_version, monkeypatch) -> SmallVersion:
    """Point FER_ARTIFACTS / FER_MANIFESTS at the tiny version (for code that uses the defaults)."""
    for key, value in tiny_prepared_version.env.items():
        monkeypatch.setenv(key, value)
    return tiny_prepared_version


@pytest.fixture
def tiny_overrides(tiny_prepared_version, tmp_path) -> list[tuple[str, str]]:
    """CLI-style overrides for a fast CPU run on the tiny version (see training/configs/tiny.yaml too)."""
    v = tiny_prepared_version
    return [("artifacts_root", str(v.artifacts_root)), ("manifests_root", str(v.manifests_root)),
            ("runtime.runs_root", str(tmp_path / "runs")), ("runtime.progress", "false"),
            ("runtime.tensorboard", "false"), ("runtime.report", "false"), ("runtime.threads", "1"),
            ("data.num_workers", "0"), ("data.image_size", str(TINY_IMAGE)), ("model.backbone", "tiny"),
            ("runtime.log_every", "1")]


@pytest.fixture(autouse=True)
def _few_threads():
    """Two shared cores: keep torch to one thread in tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
