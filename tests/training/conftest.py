"""Shared fixtures of the trainer tests (also used by the LA-Net, SOFT and LDLVA test files here).

`tiny_prepared_version` builds one complete prepared version of the synthetic dataset per session
(training.testbed.build_tiny_version: 120 samples, 64x64 crops, true landmarks and AUs, exact KNN
graphs `au`, `landmarks`, `va` (FAKE per-class VA), label variants `clean` and `sym-0.30`, a lock).
Tests read it through `training.data.PreparedVersion.open(..., artifacts_root=, manifests_root=)`
or by setting FER_ARTIFACTS / FER_MANIFESTS (see `tiny_env`). Never write into it.
"""
from __future__ import annotations

import pytest
import torch

from training.testbed import TinyVersion, build_tiny_version

TINY_CROP = 64      # stored crop side
TINY_IMAGE = 56     # random crop side fed to the network


@pytest.fixture(scope="session")
def tiny_prepared_version(tmp_path_factory) -> TinyVersion:
    """A read-only tiny prepared version (fields: dataset, version, artifacts_root, manifests_root, ...)."""
    root = tmp_path_factory.mktemp("tiny-version")
    return build_tiny_version(root / "artifacts", root / "manifests", n=120, crop_size=TINY_CROP, seed=0)


@pytest.fixture
def tiny_env(tiny_prepared_version, monkeypatch) -> TinyVersion:
    """Point FER_ARTIFACTS / FER_MANIFESTS at the tiny version (for code that uses the defaults)."""
    monkeypatch.setenv("FER_ARTIFACTS", str(tiny_prepared_version.artifacts_root))
    monkeypatch.setenv("FER_MANIFESTS", str(tiny_prepared_version.manifests_root))
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
