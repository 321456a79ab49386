"""The plain prepare runner (no Prefect): a whole run, its lock, verify, early config errors, the run lock."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_prepare_config
from pipeline.contract.errors import BackendMissingError, ConfigError
from pipeline.contract.lock import read_lock
from pipeline.contract.tables import read_metadata
from pipeline.prepare import ThreadMapper, run_prepare
from pipeline.store.hashing import hash_file
from pipeline.store.prepare_lock import PrepareLock
from pipeline.verify import verify_version

PROJECT = Path(__file__).resolve().parents[2]
FAST = ["source.n=24", "shard_size=8", "align.detector=given", "align.crop_size=64", "landmarks.backend=provided",
        "graphs.backend=exact", "graphs.k=4", "noise.variants=[sym-0.30]", "report=false"]

NO_PREFECT = """
import json, sys
from pipeline.config import load_prepare_config
from pipeline.prepare import run_prepare
summary = run_prepare(load_prepare_config(None, sys.argv[1:]), progress=False)
heavy = sorted(m for m in ("prefect", "prefect_dask", "dask.distributed") if m in sys.modules)
print(json.dumps({"version": summary["version"], "path": summary["path"], "imported": heavy}))
"""


def test_a_whole_prepare_runs_without_prefect():
    options = [o for o in FAST if o != "report=false"]                       # the report too
    result = subprocess.run([sys.executable, "-c", NO_PREFECT, *options], cwd=PROJECT, capture_output=True,
                            text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["imported"] == [], f"the plain prepare imported {summary['imported']}"
    directory = Path(summary["path"])
    for name in ("samples.parquet", "faces.parquet", "landmarks.parquet", "action_units.parquet",
                 "quarantine.parquet", "graphs/au.parquet", "labels/sym-0.30.parquet", "report.html",
                 "manifest.json", "crops/crops.u8"):
        assert (directory / name).is_file(), name
    assert read_lock("synthetic")["version"] == summary["version"]
    seconds = json.loads((directory / "manifest.json").read_text())["summary"]["seconds"]   # timings: the manifest
    assert seconds["graph-au-build"] >= 0 and seconds["graph-au-recall"] >= 0


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


@pytest.fixture
def prepared():
    summary = run_prepare(load_prepare_config(None, FAST), ThreadMapper(2), progress=False)
    return summary, Path(summary["path"])


def test_lock_lists_every_output_with_hash_and_size_and_no_absolute_path(prepared, tmp_path):
    summary, directory = prepared
    lock = read_lock("synthetic", summary["version"])
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    assert sorted(lock["outputs"]) == files
    for name, entry in lock["outputs"].items():
        assert entry == {"hash": hash_file(directory / name), "size": (directory / name).stat().st_size}
    roots = [os.environ["FER_ARTIFACTS"], os.environ["FER_MANIFESTS"], os.environ["FER_CACHE"], str(Path.home())]
    leaked = [s for s in _strings(lock) if s.startswith("/") or any(root in s for root in roots)]
    assert not leaked, f"absolute paths in the lock: {leaked[:5]}"
    assert lock["sources"]["dataset_root"] == {"root": "cache", "path": "sources/synthetic"}
    assert lock["sources"]["image_root"]["root"] == "dataset"
    assert lock["sources"]["images"]["count"] == 24
    assert read_metadata(directory / "samples.parquet")["image_root"] == lock["sources"]["image_root"]
    assert json.loads((directory / "manifest.json").read_text())["outputs"] == lock["outputs"]


def test_verify_finds_no_drift_then_every_kind_of_drift(prepared, monkeypatch, tmp_path):
    summary, directory = prepared
    clean = verify_version("synthetic")
    assert clean.ok and clean.version == summary["version"] and clean.checked > 24
    (directory / "labels" / "sym-0.30.parquet").write_bytes(b"not a table")
    (directory / "faces.parquet").unlink()
    (directory / "notes.txt").write_text("added by hand")
    drift = verify_version("synthetic", summary["version"], sources=False)
    assert drift.changed == ["labels/sym-0.30.parquet"] and drift.missing == ["faces.parquet"]
    assert drift.extra == ["notes.txt"] and not drift.ok
    command = [sys.executable, "-m", "flows", "verify", "--dataset", "synthetic"]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "changed  labels/sym-0.30.parquet" in result.stdout and "missing  faces.parquet" in result.stdout
    assert "extra    notes.txt" in result.stdout and "DRIFT" in result.stdout


def test_verify_rehashes_source_images(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "private-cache"))     # images this test may damage
    summary = run_prepare(load_prepare_config(None, [*FAST, "source.n=8"]), progress=False)
    assert verify_version("synthetic").ok
    lock = read_lock("synthetic")
    image_root = tmp_path / "private-cache" / lock["sources"]["dataset_root"]["path"] / \
        lock["sources"]["image_root"]["path"]
    victim = sorted(image_root.glob("train/*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    drift = verify_version("synthetic", summary["version"])
    assert drift.changed == [f"image train/{victim.name}"] and not drift.missing


def test_a_backend_error_fails_before_any_image_is_read(tmp_path):
    missing = tmp_path / "nowhere" / "HR18-300W.pth"
    config = load_prepare_config(None, [*FAST, "landmarks.backend=hrnet", f"landmarks.hrnet_checkpoint={missing}"])
    with pytest.raises((BackendMissingError, ConfigError), match="hrnet_checkpoint"):
        run_prepare(config, progress=False)
    artifacts = Path(os.environ["FER_ARTIFACTS"])
    assert not (artifacts / "synthetic" / "_parts").exists(), "a config error must leave no per-image results"
    assert not list((artifacts / "synthetic").glob("[0-9a-f]*"))


HOLDER = """
import sys, time
from pathlib import Path
from pipeline.store.prepare_lock import PrepareLock
with PrepareLock(Path(sys.argv[1]), "synthetic"):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], cwd=PROJECT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_second_prepare_refuses_naming_the_holder_or_waits_for_it():
    config = load_prepare_config(None, FAST)
    artifacts = Path(os.environ["FER_ARTIFACTS"])
    holder = _hold(artifacts, 60)
    try:
        with pytest.raises(ConfigError, match=f"another prepare of 'synthetic'.*pid {holder.pid}"):
            run_prepare(config, progress=False)
    finally:
        holder.kill()
        holder.wait()
    holder = _hold(artifacts, 1.0)                      # exits after a second: a waiting prepare then runs
    start = time.monotonic()
    summary = run_prepare(load_prepare_config(None, [*FAST, "lock_wait_s=120"]), progress=False)
    holder.wait()
    assert summary["version"] and time.monotonic() - start >= 0.5
    with PrepareLock(artifacts, "synthetic"):      # released after the run, and after the holder's SIGKILL
        pass


def _rafdb_root(root: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ["train_00001", "train_00002", "train_00003", "test_0001"]
    for name in names:
        path = root / "Image" / "aligned" / f"{name}_aligned.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(path, quality=90)
    (root / "EmoLabel").mkdir()
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 5\ntrain_00002.jpg 4\ntrain_00003.jpg 7\ntest_0001.jpg 7\n")
    return root


def test_a_real_layouts_lock_records_label_files_relative_to_the_dataset_root(tmp_path):
    root = _rafdb_root(tmp_path / "RAF-DB" / "basic")
    options = ["graphs.spaces=[]", "noise.variants=[sym-0.30]", "report=false", "align.crop_size=64"]
    summary = run_prepare(load_prepare_config(None, options, dataset="rafdb", root=str(root)), progress=False)
    lock = read_lock("rafdb", summary["version"])
    label = lock["sources"]["label_files"][0]
    assert label["root"] == "dataset" and label["path"] == "EmoLabel/list_patition_label.txt"
    assert label["hash"] == hash_file(root / "EmoLabel" / "list_patition_label.txt")
    assert lock["sources"]["image_root"] == {"root": "dataset", "path": "Image"}
    assert lock["config"]["root"] == {"root": "dataset", "path": "."} and str(tmp_path) not in json.dumps(lock)
    assert verify_version("rafdb", dataset_root=root).ok
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\n")
    drift = verify_version("rafdb", dataset_root=root)
    assert drift.changed == ["source dataset:EmoLabel/list_patition_label.txt"]
    missing_root = verify_version("rafdb")                      # no --root: the images cannot be located
    assert any("not declared here" in note or "not under a declared root" in note for note in missing_root.notes)


# --- runners: serial | threads | processes -----------------------------------------------------------------

def test_the_runner_option_picks_the_mapper_and_refuses_an_unknown_one():
    from pipeline.prepare import ProcessMapper, ShardMapper, make_mapper

    assert type(make_mapper(load_prepare_config(None, ["runner=serial"]))) is ShardMapper
    assert type(make_mapper(load_prepare_config(None, ["runner=threads", "max_workers=3"]))) is ThreadMapper
    mapper = make_mapper(load_prepare_config(None, []))
    assert isinstance(mapper, ProcessMapper) and mapper.max_workers == 2 and mapper.min_images == 2000
    with pytest.raises(ConfigError, match="unknown runner 'forks'; valid choices: serial, threads, processes"):
        load_prepare_config(None, ["runner=forks"])


def _fail_in_worker(shard, kind: str) -> int:
    """Shard work for the worker-failure test (module level: spawned workers import it by name)."""
    from pipeline.images import ImageReadError

    if kind == "data" and shard.num_rows == 2:
        raise ImageReadError("truncated_or_corrupt_image", "broken huffman table", "train/00002.png")
    if kind == "bug" and shard.num_rows == 2:
        raise ValueError("shapes (3,) and (4,) not aligned")
    if kind == "die" and shard.num_rows == 2:
        os._exit(3)
    return shard.num_rows


def _shards(*sizes: int):
    import pyarrow as pa

    return [pa.table({"relpath": [f"train/{size}-{i}.png" for i in range(size)]}) for size in sizes]


@pytest.mark.parametrize("kind, raised, message", [
    ("data", "DataError", "truncated_or_corrupt_image: broken huffman table (train/00002.png)"),
    ("bug", "ValueError", "shapes (3,) and (4,) not aligned"),
    ("die", "ArtifactError", "faces: a worker process died (out of memory, or a crash in native code?)"),
])
def test_a_failure_in_a_worker_is_raised_here_as_one_line_with_its_class(kind, raised, message, caplog):
    import logging
    from functools import partial

    from pipeline.mappers import WorkerPool, map_on_pool

    pool = WorkerPool(2)
    try:
        with caplog.at_level(logging.INFO, logger="pipeline.mappers"), pytest.raises(Exception) as caught:
            list(map_on_pool(pool, "faces", partial(_fail_in_worker, kind=kind), _shards(1, 2, 3)))
    finally:
        pool.close()
    assert type(caught.value).__name__ == raised and str(caught.value).startswith(message)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__, "no pickled remote traceback"
    if kind != "die":           # the worker's own traceback goes to the log (the log file, not the terminal)
        logged = [r.getMessage() for r in caplog.records if "failed in worker pid" in r.getMessage()]
        assert logged and "Traceback" in logged[0] and "_fail_in_worker" in logged[0]


def test_worker_processes_run_every_shard_once_and_a_small_stage_stays_in_this_process():
    from functools import partial

    from pipeline.mappers import WorkerPool, map_on_pool
    from pipeline.prepare import ProcessMapper

    pool = WorkerPool(2)
    try:
        assert sorted(map_on_pool(pool, "faces", partial(_fail_in_worker, kind="none"), _shards(1, 3, 4, 5))) == \
            [1, 3, 4, 5]
        assert len(pool.pids) == 2 and os.getpid() not in pool.pids
    finally:
        pool.close()
    mapper = ProcessMapper(2, min_images=10)
    mapper.policy.pool = WorkerPool(2)
    work = partial(_fail_in_worker, kind="none")
    try:   # one shard, or fewer images than min_images: no worker is started for them
        assert list(mapper.map_shards("faces", work, _shards(6), Path("."))) == [6]
        assert sorted(mapper.map_shards("faces", work, _shards(4, 5), Path("."))) == [4, 5]
        assert not mapper.policy.pool.running
        assert sorted(mapper.map_shards("faces", work, _shards(5, 6), Path("."))) == [5, 6]
        assert mapper.policy.pool.running
    finally:
        mapper.close()


def test_a_shard_reads_only_the_upstream_parts_that_hold_its_keys(tmp_path):
    import numpy as np
    import pyarrow as pa

    from pipeline.prepare import upstream_store, with_upstream_parts
    from pipeline.store.parts import Part, PartStore

    faces = PartStore(tmp_path / "faces")
    for start in (0, 4, 8):                     # three parts of 4 keys; key 9 quarantined
        keys = [f"k{i}" for i in range(start, start + 4) if i != 9]
        faces.write(Part(pa.table({"key": keys, "status": ["ok"] * len(keys)}), [("k9", "no_face", "")] * (start == 8),
                         {"crops": np.full((len(keys), 2, 2, 3), start, np.uint8)}))    # [n, 2, 2, 3]
    shards = [pa.table({"key": ["k2", "k5"]}), pa.table({"key": ["k9", "k10"]}), pa.table({"key": ["k1"]})]
    named = with_upstream_parts(shards, {"faces": faces})
    subsets = [upstream_store(shard, "faces", faces.directory) for shard in named]
    assert [len(s.parts()) for s in subsets] == [2, 1, 1]
    for shard, subset in zip(named, subsets):
        keys = shard.column("key").to_pylist()
        assert subset.gather(keys) == faces.gather(keys)
        with_rows = [k for k in keys if k != "k9"]
        assert np.array_equal(subset.gather_array("crops", with_rows), faces.gather_array("crops", with_rows))
    assert upstream_store(shards[0], "faces", faces.directory).names is None         # no metadata: every part
