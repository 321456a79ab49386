"""The manifest and lock of a finished version: written last, so their presence means the version is complete.

`manifest.json` (in the version folder) and `data_manifests/versions/<dataset>/<version>.json` (the lock)
hold the same record: stage fingerprints, parameters, source files and every output with its content
hash and size, with no absolute path (pipeline.store.outputs). The lock adds the time and package versions.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from pipeline.contract.crops import FORMAT as CROPS_FORMAT
from pipeline.contract.lock import declared_roots, manifests_root, relative_record, write_lock
from pipeline.contract.tables import MANIFEST
from pipeline.store.outputs import hash_outputs, source_record, without_absolute_paths
from pipeline.store.plan import VersionPlan, stage_versions

LOCK_FORMAT = "2"          # 2: outputs carry {hash, size}; sources listed; paths relative to declared roots


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


def _atomic_json(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def version_record(config, stages, plan: VersionPlan, source, summary: dict) -> dict:
    """The manifest/lock record of a version whose every output is written."""
    roots = run_roots(source)
    label_files = [Path(p) for p in getattr(source, "label_files", None) or ()]
    record = {
        "lock_format": LOCK_FORMAT, "dataset": plan.dataset, "version": plan.version,
        "num_classes": stages.spec.num_classes, "classes": list(stages.spec.classes),
        "stages": plan.stage_fingerprints, "stores": plan.store_fingerprints, "stage_versions": stage_versions(),
        "config": dataclasses.asdict(config),
        "stage_configs": {name: dataclasses.asdict(getattr(stages, name)) for name in
                          ("align", "landmarks", "action_units", "graphs")},
        "noise_variants": list(stages.noise), "spaces": list(stages.spaces),
        "crops": {"format": CROPS_FORMAT, "size": stages.align.crop_size},
        "sources": source_record(plan.version_dir, source.image_root, label_files, roots),
        "summary": {k: v for k, v in summary.items() if k != "path"},
    }
    record = without_absolute_paths(record, roots)
    record["outputs"] = hash_outputs(plan.version_dir)
    return record


def finish_version(config, stages, plan: VersionPlan, source, counts: dict, timings: dict) -> dict:
    """Write manifest.json and the lock (in that order); return the run's summary."""
    summary = {"dataset": plan.dataset, "version": plan.version, "path": str(plan.version_dir),
               "computed": counts, "seconds": timings, "source": source.summary()}
    record = version_record(config, stages, plan, source, summary)
    _atomic_json(plan.version_dir / MANIFEST, record)
    write_lock(plan.dataset, plan.version, record)
    return summary


def ensure_lock(plan: VersionPlan) -> None:
    """A complete version whose lock is missing (a run killed between manifest and lock) gets it back."""
    lock = manifests_root() / "versions" / plan.dataset / f"{plan.version}.json"
    if not lock.is_file():
        record = json.loads((plan.version_dir / MANIFEST).read_text())
        write_lock(plan.dataset, plan.version, record)
