"""What a lock records about a version: its outputs and source files by content hash, paths relative to roots.

Outputs are listed DVC-outs style, `{"samples.parquet": {"hash": ..., "size": ...}, "crops/crops.u8": ...}`,
every file of the version folder but the manifest itself. Source files are the label files an adapter
read (hash and size each) and the images, recorded by reference: their count and the digest of the
(relpath, content hash) list that samples.parquet holds row by row, under the image root.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.contract.lock import relative_record
from pipeline.contract.tables import MANIFEST, SAMPLES, read_table
from pipeline.store.fingerprint import digest_strings
from pipeline.store.hashing import HASH_NAME, hash_file

log = logging.getLogger(__name__)
HASH_THREADS = 4           # blake2 releases the GIL on large reads: a few threads hash big crop stores faster


def output_files(version_dir: str | Path) -> list[str]:
    """Relative posix paths of every output file (not the manifest, not hidden temporary files), sorted."""
    root = Path(version_dir)
    names = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and relative.as_posix() != MANIFEST and not any(p.startswith(".") for p in relative.parts):
            names.append(relative.as_posix())
    return sorted(names)


def file_record(path: Path) -> dict:
    return {"hash": hash_file(path), "size": path.stat().st_size}


def hash_files(root: Path, names: list[str]) -> dict[str, dict]:
    """{name: {"hash", "size"}} of files under `root`, hashed on a few threads (order of `names`)."""
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(HASH_THREADS, len(names))) as pool:
        records = list(pool.map(lambda name: file_record(root / name), names))
    return dict(zip(names, records))


def hash_outputs(version_dir: str | Path) -> dict[str, dict]:
    """Every output of a version folder with its content hash and size."""
    return hash_files(Path(version_dir), output_files(version_dir))


def image_digest(samples) -> str:
    """One digest over the (relpath, content hash) pairs of samples.parquet, in row order."""
    rows = zip(samples.column("relpath").to_pylist(), samples.column("content_hash").to_pylist())
    return digest_strings([f"{relpath}:{digest}" for relpath, digest in rows])


def source_record(version_dir: Path, image_root: Path, label_files: list[Path], roots: Mapping[str, Path]) -> dict:
    """The source files of a version: label files (hash, size), images by reference, roots relative."""
    samples = read_table(Path(version_dir) / SAMPLES, ["relpath", "content_hash"])
    labels = []
    for path in label_files:
        labels.append({**relative_record(path, roots), **file_record(Path(path))})
    dataset_root = {name: roots[name] for name in roots if name != "artifacts"}
    return {
        "hash_name": HASH_NAME,
        "dataset_root": relative_record(roots["dataset"], dataset_root, exclude=("dataset",))
        if "dataset" in roots else None,
        "image_root": relative_record(image_root, roots),
        "label_files": labels,
        "images": {"count": samples.num_rows, "table": SAMPLES, "digest": image_digest(samples)},
    }


def _looks_absolute(value: str) -> bool:
    return len(value) > 1 and (value.startswith("/") or value.startswith("~") or
                               (len(value) > 2 and value[1] == ":" and value[2] in "\\/"))


def without_absolute_paths(value: object, roots: Mapping[str, Path], key: str = "") -> object:
    """A copy of a JSON-like record where every absolute path string becomes a relative record."""
    if isinstance(value, Mapping):
        return {k: without_absolute_paths(v, roots, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_absolute_paths(v, roots, key) for v in value]
    if isinstance(value, os.PathLike) or isinstance(value, str) and _looks_absolute(value):
        record = relative_record(value, roots)
        if record["root"] is None:
            log.warning("lock key %s: %s is outside every declared root; only its name is recorded", key, value)
        return record
    return value
