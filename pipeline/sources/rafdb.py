"""RAF-DB (basic) adapter: EmoLabel/list_patition_label.txt and Image/aligned or Image/original.

Each line is `train_00001.jpg 5`; native ids 1..7 are surprise, fear, disgust, happiness, sadness,
anger, neutral (mapped in the spec). The split is the file name's prefix (train_/test_).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.contract.errors import ConfigError, choices_message
from pipeline.sources.base import SourceRecord, SourceScan
from pipeline.specs import DatasetSpec

ADAPTER_VERSION = "1.0"
VARIANTS = ("aligned", "original")


def _image_relpath(name: str, variant: str) -> str:
    if variant == "aligned":
        stem = name.rsplit(".", 1)[0]
        return f"aligned/{stem}_aligned.jpg"
    return f"original/{name}"


def scan_rafdb(root: Path, spec: DatasetSpec, work_dir: Path) -> SourceScan:
    """Read the label list into records; images are validated later."""
    variant = spec.image_variant
    if variant not in VARIANTS:
        raise ConfigError(choices_message("RAF-DB image_variant", variant, VARIANTS))
    label_file = root / spec.splits.get("label_file", "EmoLabel/list_patition_label.txt")
    if not label_file.is_file():
        raise ConfigError(f"RAF-DB label file not found: {label_file} (spec key splits.label_file)")
    if not (root / "Image" / variant).is_dir():
        raise ConfigError(f"RAF-DB image folder not found: {root / 'Image' / variant} (spec key image_variant)")
    scan = SourceScan(image_root=root / "Image", label_files=[label_file],
                      params={"adapter": f"rafdb@{ADAPTER_VERSION}", "variant": variant})
    for line in label_file.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        name = parts[0]
        if len(parts) != 2:
            scan.quarantine_row(name, "malformed_row", f"line {line!r}")
            continue
        split = name.split("_", 1)[0]
        if split not in ("train", "test"):
            scan.quarantine_row(name, "unknown_split", f"name {name!r} starts with neither train_ nor test_")
            continue
        label = spec.label_of(parts[1])
        if label is None:
            scan.quarantine_row(name, "label_outside_class_set", f"label {parts[1]!r}")
            continue
        scan.records.append(SourceRecord(relpath=_image_relpath(name, variant), split=split,
                                         label=label, source_label=parts[1]))
    return scan
