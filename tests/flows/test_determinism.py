"""Same id, same content: one small version built four ways holds identical artefacts.

1 worker (serial); threads (ThreadMapper, 2 workers); worker processes (ProcessMapper, 2 spawned
workers); a 2-worker Dask LocalCluster through the Prefect flow; and plain runs (serial, processes) killed
with SIGKILL in the middle of the faces stage, then resumed. Contents are
compared table by table (values and metadata; the graphs' build time is the only key left out) and the
crops array byte for byte: ids alone prove nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_prepare_config
from pipeline.contract.crops import open_crops, read_valid_mask
from pipeline.prepare import ProcessMapper, ShardMapper, ThreadMapper, run_prepare
from pipeline.store.parts import PartStore

PROJECT = Path(__file__).resolve().parents[2]
OVERRIDES = ["source.n=24", "shard_size=4", "graphs.k=4", "graphs.backend=exact", "landmarks.backend=dlib",
             "action_units.backend=estimate", "noise.variants=[sym-0.30, asym-0.20]", "report=false"]
SKIPPED = {"manifest.json", "report.html"}        # carry timings; every artefact they describe is compared


def version_contents(directory: Path) -> dict[str, object]:
    """Every artefact of a version folder as comparable values: tables, metadata, arrays, other bytes."""
    contents: dict[str, object] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name in SKIPPED:
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            contents[name] = (table.replace_schema_metadata(None).to_pydict(), table.schema.metadata,
                              path.read_bytes())     # values, metadata and the very bytes
        elif name != "crops/crops.u8":
            contents[name] = path.read_bytes()
    crops = open_crops(directory / "crops")                   # [N, S, S, 3] uint8
    contents["crops array"] = (crops.shape, np.asarray(crops).tobytes())
    contents["crops valid"] = read_valid_mask(directory / "crops").tolist()
    return contents


def assert_same_contents(actual: Path, expected: Path) -> None:
    got, want = version_contents(actual), version_contents(expected)
    assert sorted(got) == sorted(want)
    differing = [name for name in want if got[name] != want[name]]
    assert not differing, f"artefacts differ from the 1-worker build: {differing}"
    for name in ("samples.parquet", "faces.parquet", "landmarks.parquet", "action_units.parquet",
                 "quarantine.parquet", "graphs/au.parquet", "graphs/landmarks.parquet",
                 "labels/clean.parquet", "labels/sym-0.30.parquet", "labels/asym-0.20.parquet", "crops array"):
        assert name in want, name


def _build(root: Path, mapper: ShardMapper, monkeypatch) -> dict:
    monkeypatch.setenv("FER_ARTIFACTS", str(root / "artifacts"))
    monkeypatch.setenv("FER_MANIFESTS", str(root / "manifests"))
    return run_prepare(load_prepare_config(None, OVERRIDES), mapper, progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The 1-worker build (module scope: every variant compares with it).

    Module fixtures run before the suite's function-scoped isolation, so the image cache is set here
    the way tests/conftest.py sets it for every test.
    """
    root = tmp_path_factory.mktemp("serial")
    cache = os.environ.get("FER_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "fer-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_CACHE", cache)
        return _build(root, ShardMapper(), patch)


def test_threads_build_the_same_contents(reference, tmp_path, monkeypatch):
    threaded = _build(tmp_path, ThreadMapper(max_workers=3), monkeypatch)
    assert threaded["version"] == reference["version"]
    assert_same_contents(Path(threaded["path"]), Path(reference["path"]))


def test_worker_processes_build_the_same_contents(reference, tmp_path, monkeypatch):
    processed = _build(tmp_path, ProcessMapper(max_workers=2), monkeypatch)
    assert processed["version"] == reference["version"] and processed["computed"]["faces"] == 24
    assert_same_contents(Path(processed["path"]), Path(reference["path"]))


KILLABLE = """
import sys
from pipeline.config import load_prepare_config
from pipeline.prepare import run_prepare
run_prepare(load_prepare_config(None, sys.argv[1:]), progress=False)
"""


def _faces_parts(artifacts: Path) -> int:
    return sum(len(PartStore(d).parts()) for d in (artifacts / "synthetic" / "_parts").glob("faces-*"))


@pytest.mark.parametrize("runner", ["serial", "processes"])
def test_killed_mid_faces_and_resumed_builds_the_same_contents(reference, runner, tmp_path, monkeypatch):
    """Only the run's own process is killed: its worker processes must die with it (none writes a part
    after the kill), and the resumed run computes exactly the shards no part holds."""
    artifacts = tmp_path / "artifacts"
    env = {**os.environ, "FER_ARTIFACTS": str(artifacts), "FER_MANIFESTS": str(tmp_path / "manifests")}
    process = subprocess.Popen([sys.executable, "-c", KILLABLE, *OVERRIDES, f"runner={runner}", "process_min_images=0"], cwd=PROJECT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed_at = time.monotonic() + 240, None
    while time.monotonic() < deadline and process.poll() is None:
        if _faces_parts(artifacts) >= 2:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_at = _faces_parts(artifacts)
            break
        time.sleep(0.01)
    assert killed_at is not None, "the run ended before the faces stage could be interrupted"
    assert killed_at < 6, "the kill came after the last faces shard"
    time.sleep(1.0)
    assert _faces_parts(artifacts) == killed_at, "a worker wrote a part after its run was killed"
    resumed = _build(tmp_path, ShardMapper(), monkeypatch)
    assert resumed["computed"]["faces"] == 24 - 4 * killed_at
    assert resumed["version"] == reference["version"]
    assert_same_contents(Path(resumed["path"]), Path(reference["path"]))


def test_dask_local_cluster_builds_the_same_contents(reference, prefect_api, tmp_path, monkeypatch):
    from flows.prepare import run_prepare as run_flow

    monkeypatch.setenv("FER_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("FER_MANIFESTS", str(tmp_path / "manifests"))
    distributed = run_flow(load_prepare_config(None, OVERRIDES), dask_workers=2)
    assert distributed["version"] == reference["version"] and distributed["computed"]["faces"] == 24
    assert_same_contents(Path(distributed["path"]), Path(reference["path"]))
    lock = json.loads((Path(distributed["path"]) / "manifest.json").read_text())
    assert lock["outputs"]["faces.parquet"]["hash"] == \
        json.loads((Path(reference["path"]) / "manifest.json").read_text())["outputs"]["faces.parquet"]["hash"]


def test_prefect_flow_with_worker_processes_builds_the_same_contents(reference, prefect_api, tmp_path, monkeypatch):
    """`make prepare`'s road: Prefect shard tasks on threads, each handing its shard to a worker process."""
    from flows.prepare import run_prepare as run_flow

    monkeypatch.setenv("FER_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("FER_MANIFESTS", str(tmp_path / "manifests"))
    overrides = [*OVERRIDES, "runner=processes", "process_min_images=0"]
    processed = run_flow(load_prepare_config(None, overrides))
    assert processed["version"] == reference["version"] and processed["computed"]["faces"] == 24
    assert_same_contents(Path(processed["path"]), Path(reference["path"]))
