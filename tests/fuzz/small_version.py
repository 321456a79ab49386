"""The trainer-side fuzz tests' data and command runners.

One small version per session, built by the real prepare with the trainer tests' parameters (so a full
suite run builds it once: bench.prepared keeps one per process and parameter set), copied into a test's
own folder before anything damages it. `train` runs the trainer's command line in-process on a copy and
returns (exit code, stderr); `verify` runs `python -m flows verify` the same way.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.prepared import SmallVersion, prepare_small_version

SAMPLES = 160            # as tests/training/conftest.py's tiny version: one build serves both
CROP = 64
TINY = "training/configs/tiny.yaml"
PROJECT = Path(__file__).resolve().parents[2]


def build_small_version(tmp_path_factory) -> SmallVersion:
    base = tmp_path_factory.getbasetemp()
    cache = os.environ.get("FER_TEST_CACHE") or str(base / "fer-cache")
    return prepare_small_version(base / "small-version", n=SAMPLES, crop_size=CROP, cache=cache)


@dataclass(frozen=True)
class Copy:
    """A private copy of the small version: damage it freely."""

    dataset: str
    version: str
    artifacts: Path
    manifests: Path
    runs: Path

    @property
    def directory(self) -> Path:
        return self.artifacts / self.dataset / self.version

    @property
    def lock(self) -> Path:
        return self.manifests / "versions" / self.dataset / f"{self.version}.json"

    @property
    def latest(self) -> Path:
        return self.manifests / "versions" / self.dataset / "latest"


def copy_version(version: SmallVersion, dest: Path) -> Copy:
    """The version folder and its locks (not the part store) under `dest`."""
    copy = Copy(version.dataset, version.version, dest / "artifacts", dest / "manifests", dest / "runs")
    shutil.copytree(version.directory, copy.directory)
    shutil.copytree(version.manifests_root / "versions" / version.dataset, copy.latest.parent)
    return copy


def train_argv(copy: Copy, *extra: str, method: str = "baseline", noise: str = "clean",
               dataset: str | None = None) -> list[str]:
    """A short CPU run of the trainer on `copy` (tiny CNN, one step) with `extra` arguments last."""
    sets = [f"artifacts_root={copy.artifacts}", f"manifests_root={copy.manifests}", f"runtime.runs_root={copy.runs}",
            "epochs=1", "runtime.max_steps=1", "runtime.progress=false", "runtime.tensorboard=false",
            "runtime.report=false", "runtime.threads=1"]
    argv = ["--dataset", copy.dataset if dataset is None else dataset, "--method", method, "--noise", noise,
            "--config", str(PROJECT / TINY)]
    for item in sets:
        argv += ["--set", item]
    return argv + list(extra)


def train(argv: list[str], capsys) -> tuple[int, str]:
    from training.train import main

    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def verify(copy: Copy, monkeypatch, capsys, version: str | None = None) -> tuple[int, str]:
    """`python -m flows verify --outputs-only` on the copy; (exit code, stdout + stderr)."""
    from flows.__main__ import main

    monkeypatch.setenv("FER_ARTIFACTS", str(copy.artifacts))
    monkeypatch.setenv("FER_MANIFESTS", str(copy.manifests))
    capsys.readouterr()
    code = main(["verify", "--dataset", copy.dataset, "--version", version or copy.version, "--outputs-only"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines a command printed (log lines are prefixed by a time stamp)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
