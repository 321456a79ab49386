"""RAF-DB (basic) adapter: EmoLabel/list_patition_label.txt and Image/aligned or Image/original.

Each line is `train_00001.jpg 5` (space- or tab-separated; a BOM, CRLF line ends and blank lines are
accepted); native ids 1..7 are surprise, fear, disgust, happiness, sadness, anger, neutral (mapped in
the spec). The split is the file name's prefix (train_/test_). Every non-blank line is one input row.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.contract.errors import ConfigError, choices_message
from pipeline.sources.base import ESCAPE_REASON, SourceRecord, SourceScan, read_text_lines, unsafe_relpath
from pipeline.specs import DatasetSpec

ADAPTER_VERSION = "1.1"
VARIANTS = ("aligned", "original")
SPLIT_PREFIXES = ("train", "test")


def _image_relpath(name: str, variant: str) -> str:
    if variant == "aligned":
        stem = name.rsplit(".", 1)[0]
        return f"aligned/{stem}_aligned.jpg"
    return f"original/{name}"


def _parse_line(text: str, where: str, variant: str, spec: DatasetSpec, scan: SourceScan) -> SourceRecord | None:
    """One label line -> a record, or None after quarantining it (one row per line)."""
    parts = text.replace("\ufeff", " ").split()
    name = parts[0] if parts else where
    if len(parts) != 2:
        scan.quarantine_row(name, "malformed_row", f"{where}: {text!r} (expected `<image name> <label>`)")
        return None
    problem = unsafe_relpath(name)
    if problem:
        scan.quarantine_row(name, ESCAPE_REASON, f"{where}: {problem}")
        return None
    split = name.split("_", 1)[0]
    if split not in SPLIT_PREFIXES:
        scan.quarantine_row(name, "unknown_split", f"{where}: name {name!r} starts with neither train_ nor test_")
        return None
    label = spec.label_of(parts[1])
    if label is None:
        scan.quarantine_row(name, "label_outside_class_set",
                            f"{where}: label {parts[1]!r}; valid: {', '.join(sorted(spec.class_map))}")
        return None
    return SourceRecord(relpath=_image_relpath(name, variant), split=split, label=label, source_label=parts[1])


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
    scan = SourceScan(image_root=root / "Image", label_files=[label_file], inputs=0,
                      params={"adapter": f"rafdb@{ADAPTER_VERSION}", "variant": variant})
    for line_no, text in read_text_lines(label_file):
        scan.inputs += 1
        record = _parse_line(text, f"{label_file.name}:{line_no}", variant, spec, scan)
        if record is not None:
            scan.records.append(record)
    return scan
