"""Damaged versions: `make prepare` on a version with a missing or changed output rebuilds it (from the part
store: no per-image work), a stale `latest` is rewritten, stray temporaries of killed writers are removed.

One version is prepared per module; each case works on its own copy (artefacts and manifests) and checks
that the rerun keeps the version id, restores every output to the hash its lock records, and that
`verify` then finds no drift.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_prepare_config
from pipeline.contract.lock import read_lock
from pipeline.prepare import ThreadMapper, run_prepare
from pipeline.store.hashing import hash_file
from pipeline.verify import verify_version

FAST = ["source.n=24", "shard_size=8", "align.detector=given", "align.crop_size=64", "landmarks.backend=provided",
        "graphs.backend=exact", "graphs.k=4", "noise.variants=[sym-0.30]", "report=false"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A prepared version in its own roots (copied by each case)."""
    base = tmp_path_factory.mktemp("damaged-template")
    cache = os.environ.get("FER_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "fer-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_CACHE", cache)
        patch.setenv("FER_ARTIFACTS", str(base / "artifacts"))
        patch.setenv("FER_MANIFESTS", str(base / "manifests"))
        summary = run_prepare(load_prepare_config(None, FAST), ThreadMapper(2), progress=False)
    return base, summary["version"]


@pytest.fixture
def version(template, tmp_path, monkeypatch):
    """(version folder, version id, outputs from the lock) in this test's own copy of the roots."""
    base, version_id = template
    for name in ("artifacts", "manifests"):
        shutil.copytree(base / name, tmp_path / name, symlinks=True)
        monkeypatch.setenv(f"FER_{name.upper()}", str(tmp_path / name))
    return tmp_path / "artifacts" / "synthetic" / version_id, version_id, read_lock("synthetic")["outputs"]


def rerun() -> dict:
    return run_prepare(load_prepare_config(None, FAST), ThreadMapper(2), progress=False)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))                               # same size, other content, newer mtime


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(100)


DAMAGE = {
    "deleted_noise_labels": ("labels/sym-0.30.parquet", os.remove),
    "deleted_valid_mask": ("crops/valid.npy", os.remove),
    "deleted_crop_store": ("crops/crops.u8", os.remove),
    "truncated_crop_store": ("crops/crops.u8", truncate),
    "deleted_graph": ("graphs/au.parquet", os.remove),
    "edited_faces_same_size": ("faces.parquet", flip_byte),
    "deleted_samples": ("samples.parquet", os.remove),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_output_is_rebuilt_from_the_part_store(name, version):
    directory, version_id, outputs = version
    relpath, damage = DAMAGE[name]
    damage(directory / relpath)
    summary = rerun()
    assert summary["version"] == version_id and not summary.get("reused")
    assert {stage: summary["computed"][stage] for stage in ("faces", "landmarks", "action_units")} == \
        {"faces": 0, "landmarks": 0, "action_units": 0}, "per-image work redone: the part store was not used"
    assert hash_file(directory / relpath) == outputs[relpath]["hash"]
    assert verify_version("synthetic").ok
    assert rerun().get("reused"), "the repaired version is complete"


def test_an_output_touched_but_unchanged_is_no_damage(version):
    directory, version_id, _ = version
    os.utime(directory / "samples.parquet")
    assert rerun().get("reused")


def test_a_stale_latest_is_rewritten(version):
    directory, version_id, _ = version
    latest = Path(os.environ["FER_MANIFESTS"]) / "versions" / "synthetic" / "latest"
    for stale in ("0123456789abcdef\n", ""):        # a kill -9 between lock and pointer; an emptied pointer
        latest.write_text(stale)
        assert rerun().get("reused")
        assert latest.read_text() == version_id + "\n"


def test_stray_temporaries_of_killed_writers_are_removed_and_live_ones_kept(version):
    directory, version_id, _ = version
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                          # a pid that is gone
    locks = Path(os.environ["FER_MANIFESTS"]) / "versions" / "synthetic"
    parts = next((directory.parent / "_parts").glob("faces-*"))
    stray = [locks / f".{version_id}.json.{dead.pid}.tmp", directory / f".manifest.json.{dead.pid}.tmp",
             directory / "crops" / f".valid.npy.{dead.pid}.tmp.npy",
             directory / "labels" / f".x.parquet.{dead.pid}.tmp"]
    for path in stray:
        path.write_text("half written")
    part = parts / f".tmp-part-0123-{dead.pid}"
    part.mkdir()
    (part / "rows.parquet").write_text("half written")
    live = locks / f".latest.{os.getpid()}.tmp"          # a writer still running: not ours to remove
    live.write_text("in progress")
    assert rerun().get("reused")
    assert not any(path.exists() for path in [*stray, part])
    assert live.exists()
    assert verify_version("synthetic").ok


def test_an_unreadable_manifest_reopens_the_version(version):
    directory, version_id, outputs = version
    record = json.loads((directory / "manifest.json").read_text())
    record["outputs"]["../../outside.parquet"] = {"hash": "0", "size": 1}
    (directory / "manifest.json").write_text(json.dumps(record))
    summary = rerun()
    assert summary["version"] == version_id and not summary.get("reused")
    assert verify_version("synthetic").ok


# --- a damaged crop store, read through the contract (the trainer's and the report's way in) -------------

def _store(folder: Path) -> Path:
    from pipeline.contract.crops import create_crop_store, write_valid_mask

    create_crop_store(folder, 4, 8).flush()
    write_valid_mask(folder, np.array([True, False, True, True]))
    return folder


CROP_DAMAGE = {
    "truncated_data": (lambda f: os.truncate(f / "crops.u8", 100), "crops.u8 is 100 bytes, its index says 768"),
    "deleted_data": (lambda f: os.remove(f / "crops.u8"), "crops.u8 is missing"),
    "index_not_json": (lambda f: (f / "index.json").write_text("{"), "index .* is unreadable"),
    "deleted_valid_mask": (lambda f: os.remove(f / "valid.npy"), "has no valid.npy"),
    "short_valid_mask": (lambda f: np.save(f / "valid.npy", np.ones(3, bool)), r"holds bool \[3\], not \[4\] bool"),
    "valid_mask_not_npy": (lambda f: (f / "valid.npy").write_bytes(b"garbage"), "valid.npy is unreadable"),
    "valid_mask_of_floats": (lambda f: np.save(f / "valid.npy", np.ones(4)), r"holds float64 \[4\]"),
}


@pytest.mark.parametrize("name", list(CROP_DAMAGE))
def test_a_damaged_crop_store_is_one_line_pointing_at_verify(name, tmp_path):
    from pipeline.contract.crops import read_valid_mask
    from pipeline.contract.errors import ArtifactError

    folder = _store(tmp_path / "crops")
    damage, message = CROP_DAMAGE[name]
    damage(folder)
    with pytest.raises(ArtifactError, match=message) as raised:
        read_valid_mask(folder)
    assert "make verify" in str(raised.value) or "index" in str(raised.value)
    assert "\n" not in str(raised.value)
