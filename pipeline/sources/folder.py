"""Folder adapter for a user's own data: <root>/<split>/<class_name>/<image>.

Class folder names are matched to canonical names (aliases like happy, angry, sad accepted; the
spec's class_map can add more). Files under an unknown class folder are quarantined, not dropped.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.contract.classes import CLASS_ALIASES
from pipeline.contract.errors import ConfigError
from pipeline.sources.base import SourceRecord, SourceScan
from pipeline.specs import DatasetSpec

ADAPTER_VERSION = "1.0"
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}


def _class_of(folder: str, spec: DatasetSpec) -> str | None:
    key = folder.strip().lower()
    name = spec.class_map.get(folder) or spec.class_map.get(key) or CLASS_ALIASES.get(key)
    return name if name in spec.classes else None


def scan_folder(root: Path, spec: DatasetSpec, work_dir: Path) -> SourceScan:
    """Walk split/class folders (sorted, so the order is stable) into records."""
    scan = SourceScan(image_root=root, params={"adapter": f"folder@{ADAPTER_VERSION}"})
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_ALIASES]
    if not split_dirs:
        raise ConfigError(f"no split folders under {root}; expected some of: {', '.join(sorted(SPLIT_ALIASES))}")
    for split_dir in split_dirs:
        split = SPLIT_ALIASES[split_dir.name.lower()]
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            name = _class_of(class_dir.name, spec)
            for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
                relpath = path.relative_to(root).as_posix()
                if name is None:
                    scan.quarantine_row(relpath, "label_outside_class_set",
                                        f"class folder {class_dir.name!r} is not one of {', '.join(spec.classes)}")
                    continue
                scan.records.append(SourceRecord(relpath=relpath, split=split,
                                                 label=spec.classes.index(name), source_label=class_dir.name))
    return scan
