"""Check a prepared version against its lock, as DVC's `status` does: re-hash, then list the drift.

`verify_version` re-reads every output of the version folder and every source file the lock names (the
label files, and each image listed in samples.parquet under the image root) and compares content hashes
and sizes with the lock. Paths in the lock are relative to the declared roots (pipeline.store.record),
so the same lock verifies on any machine once FER_ARTIFACTS / FER_CACHE / the dataset root point at
the data. `python -m flows verify --dataset D [--version V]` and `make verify` print the result.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.contract.errors import ArtifactError, ConfigError
from pipeline.contract.integrity import resolve_version
from pipeline.contract.lock import artifacts_root, read_lock
from pipeline.contract.tables import MANIFEST, SAMPLES, read_table
from pipeline.store.record import (
    HASH_THREADS,
    declared_roots,
    file_record,
    hash_files,
    image_digest,
    output_files,
    resolve_record,
)

log = logging.getLogger(__name__)
LOCK_ONLY_KEYS = ("written", "packages")


@dataclass
class Drift:
    """What differs between a version on disk and its lock (empty lists: no drift)."""

    dataset: str
    version: str
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    checked: int = 0                 # files re-hashed or compared
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.extra)

    def lines(self) -> list[str]:
        out = [f"{kind:<8} {name}" for kind, names in (("missing", self.missing), ("changed", self.changed),
                                                        ("extra", self.extra)) for name in names]
        verdict = "matches its lock" if self.ok else (f"DRIFT: {len(self.missing)} missing, {len(self.changed)} "
                                                      f"changed, {len(self.extra)} extra")
        return [*out, *[f"note     {n}" for n in self.notes],
                f"{self.dataset} version {self.version}: {self.checked} files checked, {verdict}"]


def _compare(root: Path, expected: dict, drift: Drift, prefix: str = "") -> None:
    """Hash the files of `expected` ({name: {"hash", "size"}} or {name: size}) under `root` into `drift`."""
    present = [name for name in expected if (root / name).is_file()]
    drift.missing += [prefix + name for name in expected if name not in set(present)]
    same_size = [n for n in present if (root / n).stat().st_size == _size(expected[n])]
    drift.changed += [prefix + n for n in present if n not in set(same_size)]
    with_hash = [n for n in same_size if isinstance(expected[n], dict) and expected[n].get("hash")]
    found = hash_files(root, with_hash)
    drift.changed += [prefix + n for n in with_hash if found[n]["hash"] != expected[n]["hash"]]
    drift.checked += len(present)


def _size(entry) -> int | None:
    return entry.get("size") if isinstance(entry, dict) else entry


def _check_outputs(lock: dict, version_dir: Path, drift: Drift) -> None:
    outputs = lock.get("outputs") or {}
    if outputs and not all(isinstance(v, dict) for v in outputs.values()):
        drift.notes.append("this lock records sizes only (lock format 1): contents cannot be compared; "
                           "prepare the version again for a lock with hashes")
    _compare(version_dir, outputs, drift)
    drift.extra += [name for name in output_files(version_dir) if name not in outputs]
    manifest = version_dir / MANIFEST
    if not manifest.is_file():
        drift.missing.append(MANIFEST)
        return
    recorded = {k: v for k, v in lock.items() if k not in LOCK_ONLY_KEYS}
    on_disk = json.loads(manifest.read_text())
    if {k: v for k, v in on_disk.items() if k not in LOCK_ONLY_KEYS} != recorded:
        drift.changed.append(MANIFEST)
    drift.checked += 1


def _source_roots(lock: dict, dataset_root: str | Path | None) -> dict[str, Path]:
    """Declared roots of this machine, with the dataset root from the argument or the lock's record."""
    roots = declared_roots(dataset_root)
    if dataset_root is None:
        record = (lock.get("sources") or {}).get("dataset_root") or {}
        found = resolve_record(record, roots) if record else None
        if found is not None:
            roots = declared_roots(found)
    return roots


def _check_images(sources: dict, version_dir: Path, image_root: Path, drift: Drift) -> None:
    samples_path = version_dir / SAMPLES
    if not samples_path.is_file():
        drift.notes.append("samples.parquet is missing: the images it lists were not checked")
        return
    samples = read_table(samples_path, ["relpath", "content_hash"])
    images = sources.get("images") or {}
    if images.get("digest") and image_digest(samples) != images["digest"]:
        drift.changed.append(f"source images listed in {SAMPLES} (their digest differs from the lock's)")
    expected = dict(zip(samples.column("relpath").to_pylist(), samples.column("content_hash").to_pylist()))
    present = [r for r in expected if (image_root / r).is_file()]
    drift.missing += [f"image {r}" for r in expected if r not in set(present)]

    def changed(relpath: str) -> bool:
        return file_record(image_root / relpath)["hash"] != expected[relpath]

    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        flags = list(pool.map(changed, present))
    drift.changed += [f"image {r}" for r, bad in zip(present, flags) if bad]
    drift.checked += len(present)


def _check_sources(lock: dict, version_dir: Path, dataset_root, drift: Drift) -> None:
    sources = lock.get("sources")
    if not sources:
        drift.notes.append("this lock lists no source files (an older lock format): sources were not checked")
        return
    roots = _source_roots(lock, dataset_root)
    for entry in sources.get("label_files") or []:
        path = resolve_record(entry, roots)
        name = f"source {entry.get('root')}:{entry.get('path')}"
        if path is None:
            drift.notes.append(f"{name}: root {entry.get('root')!r} is not declared here (give --root)")
        elif not path.is_file():
            drift.missing.append(name)
        else:
            drift.checked += 1
            if file_record(path) != {"hash": entry.get("hash"), "size": entry.get("size")}:
                drift.changed.append(name)
    image_root = resolve_record(sources.get("image_root") or {}, roots)
    if image_root is None:
        drift.notes.append(f"image root {sources.get('image_root')} is not under a declared root here "
                           f"(give --root, or set FER_CACHE / FER_DATA_ROOT): images were not checked")
        return
    _check_images(sources, version_dir, image_root, drift)


def checked_version(dataset: str, version: str, manifests: Path | None = None) -> str:
    """The version id asked for, `latest` followed: each a plain name, since each becomes a path (the
    contract's reading, shared with the trainer: pipeline.contract.integrity.resolve_version)."""
    return resolve_version(dataset, version, manifests)


def _read_lock(dataset: str, version: str, manifests: Path | None) -> dict:
    """The lock of `version`, or one line: missing (a ConfigError with the known versions), not JSON, or
    naming another version than its file."""
    try:
        lock = read_lock(dataset, version, root=manifests)
    except ArtifactError as exc:
        raise ConfigError(str(exc)) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"the lock of {dataset} version {version} is not valid JSON ({exc}); restore it "
                            f"or prepare the version again") from None
    if not isinstance(lock, dict) or lock.get("version") != version:
        named = lock.get("version") if isinstance(lock, dict) else type(lock).__name__
        raise ArtifactError(f"the lock of {dataset} version {version} names version {named!r}: it was edited "
                            f"or copied; restore it or prepare the version again")
    return lock


def verify_version(dataset: str, version: str = "latest", dataset_root: str | Path | None = None,
                   sources: bool = True, artifacts: Path | None = None, manifests: Path | None = None) -> Drift:
    """Re-hash a version's outputs (and, with `sources`, its source files) against its lock."""
    version = checked_version(dataset, version, manifests)
    lock = _read_lock(dataset, version, manifests)
    version_dir = (artifacts or artifacts_root()) / dataset / lock["version"]
    drift = Drift(dataset, lock["version"])
    if not version_dir.is_dir():
        drift.missing.append(f"{version_dir.name}/ (the whole version folder under the artefact root)")
        return drift
    _check_outputs(lock, version_dir, drift)
    if sources:
        _check_sources(lock, version_dir, dataset_root, drift)
    log.info("verified %s %s: %d files, %d missing, %d changed, %d extra", dataset, drift.version, drift.checked,
             len(drift.missing), len(drift.changed), len(drift.extra))
    return drift
