"""Dataset source adapters: native files -> samples.parquet + quarantine.parquet.

`prepare_source` is the stage: it runs the spec's adapter, validates and hashes every image, numbers
the samples, writes both tables and returns a `SourceResult` with the stage fingerprint and a summary.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.contract.errors import ConfigError
from pipeline.contract.registry import Registry
from pipeline.contract.tables import QUARANTINE, SAMPLES, quarantine_table, write_table
from pipeline.sources.affectnet import scan_affectnet
from pipeline.sources.base import SourceScan, build_samples_table_from_scan
from pipeline.sources.ferplus import scan_ferplus
from pipeline.sources.folder import scan_folder
from pipeline.sources.rafdb import scan_rafdb
from pipeline.sources.synthetic import scan_synthetic
from pipeline.specs import DatasetSpec, load_spec, resolve_root
from pipeline.store.fingerprint import digest_strings, fingerprint
from pipeline.store.hashing import HashCache, default_hash_cache, hash_file

log = logging.getLogger(__name__)
STAGE_NAME = "sources"
STAGE_VERSION = "1.0"
ADAPTERS: Registry = Registry("adapter")      # the project's one Registry: a duplicate name is refused
for _name, _scan in (("affectnet", scan_affectnet), ("rafdb", scan_rafdb), ("ferplus", scan_ferplus),
                     ("folder", scan_folder), ("synthetic", scan_synthetic)):
    ADAPTERS.register(_name)(_scan)


@dataclass
class SourceResult:
    """What the sources stage produced for one dataset."""

    spec: DatasetSpec
    samples: pa.Table
    quarantine: pa.Table
    fingerprint: str
    image_root: Path
    exclusions: Counter = field(default_factory=Counter)
    inputs: int | None = None   # input rows (or files) the adapter read: kept + quarantined + excluded
    root: Path | None = None    # the dataset root the adapter read (lock paths are relative to it)
    label_files: list[Path] = field(default_factory=list)   # files whose content defines the labels

    @property
    def metadata(self) -> dict:
        """Parquet metadata of samples.parquet: class names, image root, exclusions, fingerprint."""
        return {"dataset": self.spec.name, "classes": list(self.spec.classes), "image_root": str(self.image_root),
                "exclusions": dict(sorted(self.exclusions.items())), "fingerprint": self.fingerprint}

    def summary(self) -> dict:
        """Counts per split and class, exclusions and quarantine by reason."""
        splits = self.samples.column("split").to_pylist()
        labels = self.samples.column("label").to_pylist()
        per_split: dict[str, dict[str, int]] = {}
        for split, label in zip(splits, labels):
            row = per_split.setdefault(split, {name: 0 for name in self.spec.classes})
            row[self.spec.classes[label]] += 1
        reasons = Counter(self.quarantine.column("reason").to_pylist())
        return {"dataset": self.spec.name, "inputs": self.inputs, "samples": self.samples.num_rows,
                "per_split": per_split,
                "exclusions": dict(sorted(self.exclusions.items())),
                "quarantine": dict(sorted(reasons.items())), "fingerprint": self.fingerprint}


def default_work_dir(dataset: str) -> Path:
    """Where adapters cache what they materialise (decoded FERPlus images, synthetic images)."""
    base = Path(os.environ.get("FER_CACHE", Path.home() / ".cache" / "fer-noise"))
    return base / "sources" / dataset


def _resolve(spec: DatasetSpec, root: str | Path | None) -> Path:
    if spec.adapter == "synthetic" and root is None and not os.environ.get("FER_DATA_ROOT"):
        path = default_work_dir(spec.name)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return resolve_root(spec, root)


def scan_source(spec: DatasetSpec, root: Path, work_dir: Path, overrides: dict | None = None,
                progress: bool = True) -> SourceScan:
    """Run the spec's adapter (no validation yet)."""
    scan = ADAPTERS.get(spec.adapter)          # an unknown adapter raises ConfigError listing the valid ones
    if spec.adapter == "synthetic":
        return scan_synthetic(root, spec, work_dir, overrides=overrides, progress=progress)
    if overrides:
        raise ConfigError(f"adapter {spec.adapter!r} takes no option overrides; got {sorted(overrides)}")
    if spec.adapter == "ferplus":
        return scan_ferplus(root, spec, work_dir, progress=progress)
    return scan(root, spec, work_dir)


def prepare_source(dataset: str | DatasetSpec, root: str | Path | None, out_dir: str | Path | None = None,
                   overrides: dict | None = None, cache: HashCache | None = None,
                   work_dir: Path | None = None, progress: bool = True) -> SourceResult:
    """The sources stage. Writes out_dir/samples.parquet and out_dir/quarantine.parquet when out_dir is given."""
    spec = dataset if isinstance(dataset, DatasetSpec) else load_spec(dataset)
    root_path = _resolve(spec, root)
    work = Path(work_dir) if work_dir else default_work_dir(spec.name)
    cache = cache or default_hash_cache()
    scan = scan_source(spec, root_path, work, overrides, progress)
    samples = build_samples_table_from_scan(spec, scan, cache, progress)
    lines = [f"{rel}:{digest}:{split}:{label}" for rel, digest, split, label in zip(
        samples.column("relpath").to_pylist(), samples.column("content_hash").to_pylist(),
        samples.column("split").to_pylist(), samples.column("label").to_pylist())]
    params = {"spec": spec.to_dict(), **scan.params, "files": digest_strings(lines),
              "label_files": [hash_file(p) for p in scan.label_files]}
    stage_fp = fingerprint(STAGE_NAME, STAGE_VERSION, params)
    quarantine = quarantine_table(scan.quarantine)
    result = SourceResult(spec, samples, quarantine, stage_fp, scan.image_root, scan.exclusions, scan.inputs,
                          root_path, list(scan.label_files))
    if out_dir is not None:
        write_table(Path(out_dir) / SAMPLES, samples, result.metadata)
        write_table(Path(out_dir) / QUARANTINE, quarantine, {"fingerprint": stage_fp})
    log.info("sources: %d samples, %d quarantined, %d excluded", samples.num_rows,
             quarantine.num_rows, sum(scan.exclusions.values()))
    return result
