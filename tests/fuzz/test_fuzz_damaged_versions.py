"""Damaged versions: the trainer and `flows verify` both refuse each one, the trainer in one `error:` line
that names the file and the fault and points at `make verify` (issue 23, item 2).

One small version is prepared by the real prepare (fast backends) for the module; each case damages its
own copy. A second group of cases damages a file and re-records its hash and size in the lock and in the
version's manifest.json (a forged lock): `verify` cannot see those, the trainer's range checks must.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contract.hashing import hash_file
from pipeline.contract.tables import vectors_to_arrow, vectors_to_numpy

from .small_version import build_small_version, copy_version, error_lines, train, train_argv, verify

VERIFY_HINT = "make verify DATASET=synthetic"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_small_version(tmp_path_factory)


# --- damage helpers: each edits one file of a copy in place ---

def _rewrite(path, change) -> None:
    """Rewrite a Parquet table with change(table) -> table, keeping its schema metadata."""
    table = pq.read_table(path)
    metadata = table.schema.metadata
    table = change(table)
    pq.write_table(table.replace_schema_metadata(metadata), path)


def _set_column(name: str, values) -> callable:
    return lambda t: t.set_column(t.schema.get_field_index(name), name, values)


def _neighbours(copy, row: int, col: int, value: int) -> None:
    def change(t):
        nbr = vectors_to_numpy(t.column("neighbors")).copy()                      # [R, K] int32
        nbr[row, col] = value
        return _set_column("neighbors", vectors_to_arrow(nbr, pa.int32()))(t)
    _rewrite(copy.directory / "graphs/au.parquet", change)


def _labels(copy, file: str, column: str, value: int) -> None:
    def change(t):
        labels = t.column(column).to_numpy().copy()
        labels[0] = value
        return _set_column(column, pa.array(labels, t.schema.field(column).type))(t)
    _rewrite(copy.directory / file, change)


def _nan_landmarks(copy) -> None:
    def change(t):
        points = np.full(vectors_to_numpy(t.column("points")).shape, np.nan, np.float32)   # [R, 2P]
        return _set_column("points", vectors_to_arrow(points))(t)
    _rewrite(copy.directory / "landmarks.parquet", change)


def _sample_id(copy, value: int) -> None:
    def change(t):
        ids = t.column("sample_id").to_numpy().copy()
        ids[0] = value
        return _set_column("sample_id", pa.array(ids, pa.int64()))(t)
    _rewrite(copy.directory / "samples.parquet", change)


def _truncate(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _lock_edit(copy, **values) -> None:
    lock = json.loads(copy.lock.read_text())
    lock.update(values)
    copy.lock.write_text(json.dumps(lock, indent=2))


def _short_valid(copy) -> None:
    path = copy.directory / "crops/valid.npy"
    np.save(path, np.load(path)[:-1])


def _flip_crop_byte(copy) -> None:
    path = copy.directory / "crops/crops.u8"
    with open(path, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))


# (case, damage, noise, regex the trainer's one error line must match)
CASES = [
    ("graph_neighbour_out_of_range", lambda c: _neighbours(c, 0, 0, 10_000), "clean", r"graphs/au\.parquet"),
    ("graph_neighbour_negative", lambda c: _neighbours(c, 3, 1, -1), "clean", r"graphs/au\.parquet"),
    ("noisy_label_outside_class_set", lambda c: _labels(c, "labels/sym-0.30.parquet", "label", 9), "sym-0.30",
     r"labels/sym-0\.30\.parquet"),
    ("sample_label_outside_class_set", lambda c: _labels(c, "samples.parquet", "label", 7), "clean",
     r"samples\.parquet"),
    ("all_nan_landmarks", _nan_landmarks, "clean", r"landmarks\.parquet"),
    ("deleted_valid_mask", lambda c: (c.directory / "crops/valid.npy").unlink(), "clean",
     r"crops/valid\.npy: missing"),
    ("lock_edited_to_8_classes", lambda c: _lock_edit(c, num_classes=8), "clean",
     r"versions/synthetic/\w+\.json: num_classes 8 does not match its class list"),
    ("lock_edited_to_8_classes_with_their_names",
     lambda c: _lock_edit(c, num_classes=8, classes=[*json.loads(c.lock.read_text())["classes"], "contempt"]),
     "clean", r"manifest\.json: differs from the lock in classes, num_classes"),
    ("truncated_crop_store", lambda c: _truncate(c.directory / "crops/crops.u8", 0.5), "clean",
     r"crops/crops\.u8: \d+ bytes, the lock records \d+"),
    ("short_valid_mask", _short_valid, "clean", r"crops/valid\.npy"),
    ("sample_id_out_of_range", lambda c: _sample_id(c, 10_000), "clean", r"samples\.parquet"),
    ("crop_store_one_byte_changed", _flip_crop_byte, "clean", r"crops/crops\.u8: content hash \w+ differs"),
    ("truncated_samples_table", lambda c: _truncate(c.directory / "samples.parquet", 0.6), "clean",
     r"samples\.parquet: \d+ bytes, the lock records"),
    ("lock_not_json", lambda c: c.lock.write_text("{ this is not json"), "clean", r"is not valid JSON"),
    ("latest_holds_garbage", lambda c: c.latest.write_bytes(b"\x00\xff../../etc/passwd\n"), "clean",
     r"the latest pointer .*latest does not hold a version id"),
]


@pytest.mark.parametrize("name,damage,noise,expected", [pytest.param(*c, id=c[0]) for c in CASES])
def test_trainer_and_verify_refuse_a_damaged_version(name, damage, noise, expected, small, tmp_path,
                                                     monkeypatch, capsys):
    copy = copy_version(small, tmp_path)
    damage(copy)
    code, err = train(train_argv(copy, noise=noise), capsys)
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expected, lines[0]), lines[0]
    if name != "latest_holds_garbage":
        assert VERIFY_HINT in lines[0], lines[0]
    assert not [p for p in copy.runs.glob("*") if p.name != "_logs"], "a run folder was made"
    version = "latest" if name == "latest_holds_garbage" else None
    code, out = verify(copy, monkeypatch, capsys, version)
    assert code != 0, out


def _forge(copy, names: list[str]) -> None:
    """Re-record the hash and size of `names` in the lock and in manifest.json: only content checks see it."""
    lock = json.loads(copy.lock.read_text())
    for name in names:
        path = copy.directory / name
        lock["outputs"][name] = {"hash": hash_file(path), "size": path.stat().st_size}
    copy.lock.write_text(json.dumps(lock, indent=2))
    manifest = {k: v for k, v in lock.items() if k not in ("written", "packages")}
    (copy.directory / "manifest.json").write_text(json.dumps(manifest, indent=2))


FORGED = [
    ("graph_neighbour_out_of_range", lambda c: _neighbours(c, 0, 0, 10_000), "graphs/au.parquet", "clean",
     r"graphs/au\.parquet: 1 neighbour indices outside \[0, 160\) \(e\.g\. 10000"),
    ("graph_neighbour_negative", lambda c: _neighbours(c, 3, 1, -1), "graphs/au.parquet", "clean",
     r"graphs/au\.parquet: 1 neighbour indices outside \[0, 160\) \(e\.g\. -1"),
    ("noisy_label_outside_class_set", lambda c: _labels(c, "labels/sym-0.30.parquet", "label", 9),
     "labels/sym-0.30.parquet", "sym-0.30", r"1 labels outside the 7 classes \[0, 7\) \(e\.g\. 9\)"),
    ("sample_label_outside_class_set", lambda c: _labels(c, "samples.parquet", "label", 7), "samples.parquet",
     "clean", r"samples\.parquet: 1 labels outside the 7 classes"),
    ("all_nan_landmarks", _nan_landmarks, "landmarks.parquet", "clean",
     r"landmarks\.parquet: \d+ rows of points hold NaN or infinite values"),
    ("short_valid_mask", _short_valid, "crops/valid.npy", "clean",
     r"crops/valid\.npy holds bool \[159\], not \[160\] bool"),
    ("sample_id_out_of_range", lambda c: _sample_id(c, 10_000), "samples.parquet", "clean",
     r"samples\.parquet: 1 sample ids outside \[0, 160\) \(e\.g\. 10000\)"),
    ("truncated_crop_store", lambda c: _truncate(c.directory / "crops/crops.u8", 0.5), "crops/crops.u8", "clean",
     r"crops/crops\.u8 is 983040 bytes, its index says 1966080 bytes \(160 crops of 64x64\)"),
]


@pytest.mark.parametrize("name,damage,file,noise,expected", [pytest.param(*c, id=c[0]) for c in FORGED])
def test_trainer_range_checks_refuse_damage_behind_a_forged_lock(name, damage, file, noise, expected, small,
                                                                   tmp_path, capsys):
    copy = copy_version(small, tmp_path)
    damage(copy)
    _forge(copy, [file])
    code, err = train(train_argv(copy, noise=noise), capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert re.search(expected, lines[0]), lines[0]


def test_an_undamaged_copy_trains_and_verifies(small, tmp_path, monkeypatch, capsys):
    """The control: the same copy, undamaged, trains one step and matches its lock."""
    copy = copy_version(small, tmp_path)
    code, err = train(train_argv(copy, noise="sym-0.30"), capsys)
    assert code == 0 and not error_lines(err), err
    assert verify(copy, monkeypatch, capsys)[0] == 0
    assert os.listdir(copy.runs)
