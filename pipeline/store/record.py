"""What a version's lock records, composed from a finished run: stages, configs, outputs and source files by
content hash, paths relative to the declared roots. pipeline.contract.lock writes, reads and checks it.

Outputs are listed DVC-outs style, `{"samples.parquet": {"hash": ..., "size": ...}, "crops/crops.u8": ...}`,
every file of the version folder but the manifest itself. Source files are the label files an adapter
read (hash and size each) and the images, recorded by reference: their count and the digest of the
(relpath, content hash) list that samples.parquet holds row by row, under the image root.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.contract.crops import INDEX_FILE
from pipeline.contract.lock import LOCK_FORMAT, artifacts_root, cache_root, manifests_root
from pipeline.contract.tables import CROPS_DIR, MANIFEST, SAMPLES, read_table
from pipeline.store.fingerprint import digest_strings
from pipeline.store.hashing import HASH_NAME, hash_file
from pipeline.store.plan import VersionPlan

log = logging.getLogger(__name__)
HASH_THREADS = 4           # blake2 releases the GIL on large reads: a few threads hash big crop stores faster


# --- paths relative to the declared roots ----------------------------------------------------------------

def declared_roots(dataset_root: str | Path | None = None) -> dict[str, Path]:
    """The roots lock paths are relative to: artifacts, cache, data ($FER_DATA_ROOT, when set) and the
    dataset root of a run (when given)."""
    roots = {"artifacts": artifacts_root(), "cache": cache_root(), "manifests": manifests_root()}
    if os.environ.get("FER_DATA_ROOT"):
        roots["data"] = Path(os.environ["FER_DATA_ROOT"])
    if dataset_root is not None:
        roots["dataset"] = Path(dataset_root)
    return {name: Path(os.path.abspath(path.expanduser())) for name, path in roots.items()}


def relative_record(path: str | Path, roots: Mapping[str, Path], exclude: Sequence[str] = ()) -> dict:
    """`{"root": name, "path": relative posix path}` under the deepest declared root holding `path`.

    A path outside every root keeps only its file name, with `"root": null`: never an absolute path.
    """
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    best: tuple[int, str, Path] | None = None
    for name, root in roots.items():
        if name in exclude:
            continue
        try:
            relative = absolute.relative_to(root)
        except ValueError:
            continue
        if best is None or len(root.parts) > best[0]:
            best = (len(root.parts), name, relative)
    if best is None:
        return {"root": None, "path": absolute.name}
    return {"root": best[1], "path": best[2].as_posix() or "."}


def resolve_record(record: Mapping[str, object], roots: Mapping[str, Path]) -> Path | None:
    """The path a relative record names under `roots`; None when its root is not declared here."""
    root = record.get("root")
    if root not in roots:
        return None
    return roots[root] / str(record.get("path") or ".")


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
    names = output_files(version_dir)
    return hash_files(Path(version_dir), names)


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


# --- the record of a finished run ----------------------------------------------------------------------------

def dataset_root_of(source) -> Path | None:
    """The dataset root a SourceResult was read from (the spec's root), when the adapter says."""
    root = getattr(source, "root", None)
    return Path(root) if root else None


def run_roots(source) -> dict[str, Path]:
    """Declared roots of this run: artifacts, cache, data and the dataset root when known."""
    return declared_roots(dataset_root_of(source))


def samples_metadata(source) -> dict:
    """samples.parquet metadata with the image root relative to the declared roots (never absolute)."""
    return {**source.metadata, "image_root": relative_record(source.image_root, run_roots(source))}


def crops_record(version_dir: Path) -> dict:
    """The crop store's format and crop size, from its index (pipeline.contract.crops)."""
    index = Path(version_dir) / CROPS_DIR / INDEX_FILE
    found = json.loads(index.read_text()) if index.is_file() else {}
    return {"format": found.get("format"), "size": found.get("size")}


def version_record(config, stages, plan: VersionPlan, source, summary: dict) -> dict:
    """The manifest/lock record of a version whose every output is written (pipeline.contract.lock.LOCK_FIELDS)."""
    roots = run_roots(source)
    label_files = [Path(p) for p in getattr(source, "label_files", None) or ()]
    configs = {stage.name: stages.configs[stage.name] for stage in stages.enabled}
    from pipeline.sources import STAGE_VERSION as sources_version

    stage_versions = {"sources": sources_version, **{stage.name: stage.version for stage in stages.stages}}
    record = {
        "lock_format": LOCK_FORMAT, "dataset": plan.dataset, "version": plan.version,
        "num_classes": stages.spec.num_classes, "classes": list(stages.spec.classes),
        "stages": plan.stage_fingerprints, "stores": plan.store_fingerprints, "stage_versions": stage_versions,
        "config": dataclasses.asdict(config),
        "stage_configs": {name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                          for name, value in configs.items()},
        "crops": crops_record(plan.version_dir),
        "sources": source_record(plan.version_dir, source.image_root, label_files, roots),
        "summary": {k: v for k, v in summary.items() if k != "path"},
    }
    record = without_absolute_paths(record, roots)
    record["outputs"] = hash_outputs(plan.version_dir)
    return record


__all__ = ["declared_roots", "relative_record", "resolve_record", "samples_metadata", "version_record"]
