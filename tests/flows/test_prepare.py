"""The prepare flow end to end on the synthetic dataset: complete, no-op rerun, incremental, resume, Dask."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_prepare_config
from pipeline.contract.crops import open_crops
from pipeline.contract.lock import read_lock
from pipeline.contract.tables import read_metadata, read_table
from pipeline.store.parts import PartStore

PROJECT = Path(__file__).resolve().parents[2]
SMALL = ["source.n=48", "shard_size=12", "graphs.k=4", "graphs.backend=exact", "noise.variants=[sym-0.30]",
         "landmarks.backend=dlib", "action_units.backend=estimate"]


def small_config(*extra: str, **fields):
    return load_prepare_config(None, [*SMALL, *extra], dataset="synthetic", **fields)


@pytest.fixture
def run(prefect_api):
    from flows.prepare import run_prepare

    return run_prepare


def test_prepare_writes_every_table_lock_and_report_then_reruns_as_noop(run, tmp_path):
    summary = run(small_config())
    version_dir = Path(summary["path"])
    assert version_dir.name == summary["version"]
    for name in ("samples.parquet", "faces.parquet", "landmarks.parquet", "action_units.parquet",
                 "quarantine.parquet", "manifest.json", "report.html", "graphs/au.parquet",
                 "graphs/landmarks.parquet", "labels/sym-0.30.parquet", "labels/clean.parquet"):
        assert (version_dir / name).is_file(), name
    samples = read_table(version_dir / "samples.parquet")
    assert samples.num_rows == 48
    crops = open_crops(version_dir / "crops")
    assert crops.shape == (48, 256, 256, 3) and crops.max() > 0
    faces = read_table(version_dir / "faces.parquet")
    assert faces.column("sample_id").to_pylist() == list(range(48))
    graph_meta = read_metadata(version_dir / "graphs" / "au.parquet")
    assert graph_meta["k"] == 4 if "k" in graph_meta else graph_meta["K"] == 4
    lock = read_lock("synthetic")
    assert lock["version"] == summary["version"] and lock["outputs"]["samples.parquet"]["size"] > 0
    assert summary["computed"]["faces"] == 48

    again = run(small_config())
    assert again["version"] == summary["version"]
    assert again.get("reused") is True and again["computed"] == {}


def test_parameter_change_gives_new_id_and_reuses_upstream_stages(run):
    first = run(small_config())
    second = run(small_config("graphs.k=5"))
    assert second["version"] != first["version"]
    assert second["computed"]["faces"] == 0 and second["computed"]["landmarks"] == 0


def test_added_images_only_go_through_per_image_stages(run):
    first = run(small_config())
    bigger = run(small_config("source.n=60"))
    assert bigger["version"] != first["version"]
    assert bigger["computed"]["faces"] == 12
    assert bigger["computed"]["landmarks"] <= 12
    assert read_lock("synthetic")["version"] == bigger["version"]


def _count_parts(store_root: Path, stage: str) -> int:
    return sum(len(PartStore(d).parts()) for d in store_root.glob(f"{stage}-*"))


def test_killed_during_landmarks_resumes_without_redoing_shards(run, tmp_path, prefect_api):
    overrides = ["shard_size=4", "max_workers=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "flows", "prepare", "--dataset", "synthetic", "--json",
               *[a for o in [*SMALL, *overrides] for a in ("--set", o)]]
    process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts_root = Path(os.environ["FER_ARTIFACTS"]) / "synthetic" / "_parts"
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and process.poll() is None:
        done = _count_parts(parts_root, "landmarks")
        if done >= 2:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_at = done
            break
        time.sleep(0.01)
    assert killed_at is not None, "the run ended before the landmark stage could be interrupted"
    total_shards = 12
    survived = _count_parts(parts_root, "landmarks")
    assert 2 <= survived < total_shards
    resumed = run(small_config(*overrides))
    assert resumed["computed"]["faces"] == 0
    assert resumed["computed"]["landmarks"] == 48 - 4 * survived

    os.environ["FER_ARTIFACTS"] = str(tmp_path / "fresh")
    os.environ["FER_MANIFESTS"] = str(tmp_path / "fresh-manifests")
    uninterrupted = run(small_config(*overrides))
    assert uninterrupted["version"] == resumed["version"]


def test_cli_prints_version_and_fails_clearly_on_bad_option(prefect_api, capsys):
    from flows.__main__ import main

    assert main(["prepare", "--set", "graphs.nonsense=1", *[a for o in SMALL for a in ("--set", o)]]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["prepare", "--dataset", "nosuch"]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err
    assert main(["prepare", "--json", *[a for o in SMALL for a in ("--set", o)]]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["version"]) == 16
    assert main(["prepare", *[a for o in SMALL for a in ("--set", o)]]) == 0   # complete: reused, still told
    printed = capsys.readouterr().out.splitlines()
    report = Path(summary["path"]) / "report.html"
    assert report.is_file() and printed[-1].startswith(f"report    {report}"), printed


def _cli_env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def test_a_failure_inside_the_flow_ends_with_one_error_line_and_a_full_log(prefect_api, tmp_path):
    empty_root = tmp_path / "rafdb"
    empty_root.mkdir()
    command = [sys.executable, "-m", "flows", "prepare", "--dataset", "rafdb", "--root", str(empty_root)]
    result = subprocess.run(command, cwd=PROJECT, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "list_patition_label" in lines[-1], lines[-5:]
    assert sum(line.startswith("error") for line in lines) == 1
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    logs = sorted((Path(os.environ["FER_ARTIFACTS"]) / "_logs").glob("prepare-*.log"))
    assert logs and "Traceback" in logs[-1].read_text()


def _started_by(owner: int) -> list[int]:
    from flows.runtime import _started_by as started_by

    return started_by(owner)


def test_a_killed_prepare_leaves_no_server_after_the_next_run_starts(tmp_path):
    from flows.runtime import RUNS_DIR, reap_stale_runs

    artifacts = Path(os.environ["FER_ARTIFACTS"])
    env = {k: v for k, v in _cli_env().items() if k != "PREFECT_API_URL"}      # its own temporary server
    command = [sys.executable, "-m", "flows", "prepare", "--dataset", "synthetic",
               *[a for o in SMALL for a in ("--set", o)]]
    process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, children = time.monotonic() + 120, []
    while time.monotonic() < deadline and process.poll() is None and not children:
        if (artifacts / RUNS_DIR / f"{process.pid}.json").is_file():
            children = _started_by(process.pid)
        time.sleep(0.1)
    assert children, "the prepare started no temporary server"
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    left = _started_by(process.pid)
    assert left, "the server outlived its prepare (what this cleanup is for)"
    assert sorted(reap_stale_runs(artifacts)) == sorted(left)     # what the next `flows prepare` does first
    assert not _started_by(process.pid) and not (artifacts / RUNS_DIR / f"{process.pid}.json").exists()
