"""Fingerprints, lock files and the content-hash stat cache."""
from __future__ import annotations

import json
import os
import re

import pytest

from pipeline.contract.errors import ArtifactError, ConfigError
from pipeline.contract.lock import read_lock, write_lock
from pipeline.store.fingerprint import canonical_json, fingerprint
from pipeline.store.hashing import HashCache, hash_file


def test_fingerprint_is_stable_and_sensitive():
    base = fingerprint("landmarks", "1.0", {"backend": "dlib", "size": 256}, parents=["abc"], seed=0)
    assert base == fingerprint("landmarks", "1.0", {"size": 256, "backend": "dlib"}, parents=["abc"], seed=0)
    assert len(base) == 16 and int(base, 16) >= 0
    changed = [
        fingerprint("landmarks", "1.1", {"backend": "dlib", "size": 256}, parents=["abc"], seed=0),
        fingerprint("landmarks", "1.0", {"backend": "hrnet", "size": 256}, parents=["abc"], seed=0),
        fingerprint("landmarks", "1.0", {"backend": "dlib", "size": 224}, parents=["abc"], seed=0),
        fingerprint("landmarks", "1.0", {"backend": "dlib", "size": 256}, parents=["abd"], seed=0),
        fingerprint("landmarks", "1.0", {"backend": "dlib", "size": 256}, parents=["abc"], seed=1),
        fingerprint("faces", "1.0", {"backend": "dlib", "size": 256}, parents=["abc"], seed=0),
    ]
    assert len(set(changed + [base])) == len(changed) + 1


def test_fingerprint_is_a_fixed_known_value():
    # Pinned: a change here means every user's version ids change; bump stage versions instead.
    assert fingerprint("sources", "1.0", {"a": 1}) == "1aeb0e5c5a171a16"
    assert canonical_json({"b": [1, 2.5], "a": "x"}) == '{"a":"x","b":[1,2.5]}'


def test_non_finite_params_rejected():
    with pytest.raises(ConfigError, match="non-finite"):
        fingerprint("graphs", "1.0", {"sigma": float("nan")})


def _record(**changes) -> dict:
    """A lock record with every field pipeline.contract.lock.LOCK_FIELDS asks for."""
    from pipeline.contract.lock import LOCK_FORMAT

    record = {"lock_format": LOCK_FORMAT, "num_classes": 7, "classes": ["neutral"], "stages": {"sources": "ab"},
              "stores": {}, "stage_versions": {"sources": "1.0"}, "config": {}, "stage_configs": {}, "crops": {},
              "sources": {}, "summary": {}, "outputs": {"samples.parquet": {"hash": "h", "size": 3}}}
    return {**record, **changes}


def test_lock_written_and_latest_pointer(tmp_path):
    path = write_lock("synthetic", "abcd1234", _record(), root=tmp_path)
    assert path == tmp_path / "versions" / "synthetic" / "abcd1234.json"
    lock = read_lock("synthetic", root=tmp_path)
    assert lock["version"] == "abcd1234" and lock["stages"] == {"sources": "ab"}
    assert "python" in lock["packages"]
    write_lock("synthetic", "ffff0000", _record(), root=tmp_path)
    assert read_lock("synthetic", root=tmp_path)["version"] == "ffff0000"
    assert read_lock("synthetic", "abcd1234", root=tmp_path)["version"] == "abcd1234"
    with pytest.raises(ArtifactError, match="known versions: abcd1234, ffff0000"):
        read_lock("synthetic", "nope", root=tmp_path)
    with pytest.raises(ArtifactError, match="make prepare DATASET=rafdb"):
        read_lock("rafdb", root=tmp_path)
    assert not list((tmp_path / "versions" / "synthetic").glob(".*tmp"))
    json.loads(path.read_text())


@pytest.mark.parametrize("changes, field", [
    ({"stages": [{"name": "sources"}]}, "'stages' must be a dict, got list"),
    ({"num_classes": "7"}, "'num_classes' must be a int, got str"),
    ({"lock_format": "1"}, "'lock_format' is '1'"),
    ({"outputs": {"crops/crops.u8": {"hash": "h"}}}, "'outputs.crops/crops.u8.size' must be a int"),
])
def test_a_lock_with_a_bad_field_fails_on_reading_naming_the_field(tmp_path, changes, field):
    path = write_lock("synthetic", "abcd1234", _record(**changes), root=tmp_path)
    with pytest.raises(ArtifactError, match=re.escape(f"{path}: field {field}")):
        read_lock("synthetic", root=tmp_path)
    record = _record()
    del record["outputs"]
    write_lock("synthetic", "abcd1234", record, root=tmp_path)
    with pytest.raises(ArtifactError, match="field 'outputs' is missing"):
        read_lock("synthetic", root=tmp_path)
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        read_lock("synthetic", root=tmp_path)


def test_hash_cache_rereads_only_changed_files(tmp_path):
    files = [tmp_path / f"{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100)
    cache = HashCache(tmp_path / "cache.sqlite")
    first = cache.hash_many(files)
    assert cache.misses == 3 and cache.hits == 0
    assert first == [hash_file(f) for f in files]
    cache.close()
    cache = HashCache(tmp_path / "cache.sqlite")   # a new process sees the stored hashes
    assert cache.hash_many(files) == first and cache.hits == 3 and cache.misses == 0
    files[1].write_bytes(b"changed content")
    os.utime(files[1], ns=(1, 1))
    second = cache.hash_many(files)
    assert cache.misses == 1 and second[1] != first[1] and second[0] == first[0]


def test_lock_paths_are_relative_to_the_deepest_declared_root(tmp_path, monkeypatch):
    from pipeline.store.record import declared_roots, relative_record, resolve_record

    monkeypatch.setenv("FER_CACHE", str(tmp_path / "cache"))
    roots = declared_roots(tmp_path / "cache" / "sources" / "synthetic")
    record = relative_record(tmp_path / "cache" / "sources" / "synthetic" / "images" / "a.png", roots)
    assert record == {"root": "dataset", "path": "images/a.png"}
    assert relative_record(tmp_path / "cache" / "hashes.sqlite", roots) == {"root": "cache", "path": "hashes.sqlite"}
    assert relative_record("/elsewhere/HR18.pth", roots) == {"root": None, "path": "HR18.pth"}
    assert resolve_record(record, roots) == tmp_path / "cache" / "sources" / "synthetic" / "images" / "a.png"
    assert resolve_record({"root": "data", "path": "x"}, roots) is None          # FER_DATA_ROOT not set


def _landmark_plan(checkpoint, tmp_path):
    from pipeline.config import load_prepare_config, resolve_stage_configs
    from pipeline.store.plan import plan_version

    config = load_prepare_config(overrides=["landmarks.backend=hrnet", f"landmarks.hrnet_checkpoint={checkpoint}"])
    return plan_version(config, resolve_stage_configs(config), "sources-fp", root=tmp_path)


def test_a_model_file_enters_the_version_id_by_content_not_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "cache"))
    first, moved = tmp_path / "a" / "HR18.pth", tmp_path / "b" / "copy.pth"
    for path in (first, moved):
        path.parent.mkdir()
        path.write_bytes(b"weights v1")
    base = _landmark_plan(first, tmp_path)
    assert _landmark_plan(moved, tmp_path).version == base.version       # copied elsewhere: same id
    first.write_bytes(b"weights v2")
    os.utime(first, ns=(1, 1))   # same size: a distinct mtime, so the stat cache re-reads the file
    changed = _landmark_plan(first, tmp_path)
    assert changed.version != base.version                                # replaced in place: new id
    before, after = base.stage_fingerprints, changed.stage_fingerprints
    assert after["faces"] == before["faces"] and after["landmarks"] != before["landmarks"]
    with pytest.raises(ConfigError, match=r"LandmarkConfig\.hrnet_checkpoint .*missing\.pth.*not a file"):
        _landmark_plan(tmp_path / "missing.pth", tmp_path)
