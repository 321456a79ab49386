"""AffectNet adapter: Manually_Annotated_file_lists/{training,validation}.csv.

Columns: subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks
("x;y;x;y;..." 68 points), expression, valence, arousal. A header row may or may not be present:
it is detected, not assumed. Native ids 8 (none), 9 (uncertain), 10 (no-face) are excluded and
counted; so is contempt (7) in a 7-class view. NULL or non-positive boxes are quarantined.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pipeline.contract.errors import ConfigError
from pipeline.sources.base import SourceRecord, SourceScan
from pipeline.specs import DatasetSpec

ADAPTER_VERSION = "1.0"
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
           "facial_landmarks", "expression", "valence", "arousal")
LANDMARK_POINTS = 68


def _image_root(root: Path, spec: DatasetSpec) -> Path:
    for candidate in spec.image_dirs:
        if (root / candidate).is_dir():
            return root / candidate
    raise ConfigError(
        f"no AffectNet image folder under {root}; looked for {', '.join(spec.image_dirs)}"
    )


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _parse_row(row: list[str], split: str, spec: DatasetSpec, scan: SourceScan) -> SourceRecord | None:
    relpath = row[0].strip() if row else ""
    if len(row) != len(COLUMNS):
        scan.quarantine_row(relpath, "malformed_row", f"{len(row)} fields, expected {len(COLUMNS)}")
        return None
    native = row[6].strip()
    if native in spec.excluded:
        scan.exclusions[spec.excluded[native]] += 1
        return None
    label = spec.label_of(native)
    if label is None:
        if native in spec.class_map:  # a real class outside this view (contempt in 7-class)
            scan.exclusions[f"{spec.class_map[native]}_outside_{spec.num_classes}_class_view"] += 1
        else:
            scan.quarantine_row(relpath, "label_outside_class_set", f"expression {native!r}")
        return None
    box = [_float(v) for v in row[1:5]]
    if any(v is None for v in box) or box[2] <= 0 or box[3] <= 0:
        scan.quarantine_row(relpath, "bad_box", f"face box {row[1:5]}")
        return None
    points = [_float(v) for v in row[5].split(";") if v.strip()]
    landmarks = None
    if len(points) == 2 * LANDMARK_POINTS and all(p is not None for p in points):
        landmarks = np.asarray(points, dtype=np.float32)
    return SourceRecord(
        relpath=relpath, split=split, label=label, source_label=native,
        valence=_float(row[7]), arousal=_float(row[8]),
        given_bbox=np.asarray(box, dtype=np.float32), given_landmarks=landmarks,
    )


def scan_affectnet(root: Path, spec: DatasetSpec, work_dir: Path) -> SourceScan:
    """Read both label files into records; images are validated later by build_samples."""
    scan = SourceScan(image_root=_image_root(root, spec), landmark_points=LANDMARK_POINTS,
                      with_va=True, with_given_box=True, params={"adapter": f"affectnet@{ADAPTER_VERSION}"})
    for split, relfile in spec.splits.items():
        path = root / relfile
        if not path.is_file():
            raise ConfigError(f"AffectNet split file for {split!r} not found: {path} (spec key splits.{split})")
        scan.label_files.append(path)
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            for line_no, row in enumerate(csv.reader(handle)):
                if line_no == 0 and row and row[0].strip() == COLUMNS[0]:
                    continue  # header present
                if not row or not any(cell.strip() for cell in row):
                    continue
                record = _parse_row(row, split, spec, scan)
                if record is not None:
                    scan.records.append(record)
    return scan
