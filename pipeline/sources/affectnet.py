"""AffectNet adapter: Manually_Annotated_file_lists/{training,validation}.csv.

Columns: subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks
("x;y;x;y;..." 68 points), expression, valence, arousal. A header row may or may not be present:
it is detected, not assumed (a header repeated further down, as left by concatenating files, is an
excluded row). Native ids 8 (none), 9 (uncertain), 10 (no-face) are excluded and counted; so is
contempt (7) in a 7-class view. Boxes that are NULL, non-numeric, non-finite, negative or without
area are quarantined (`bad_box`), and so, once the image's size is known, is a box lying wholly outside
its image (`box_outside_image`, the faces stage's reason for the same fault), as are landmark strings
that are present but not 68 finite points (`bad_landmarks`); an empty or NULL landmark field keeps the
row without points. Valence or arousal outside [-1, 1] (AffectNet writes -2 for "not annotated") or
non-numeric is stored as null.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.contract.errors import ConfigError
from pipeline.geometry import clip_box
from pipeline.sources.base import SourceRecord, SourceScan, fit_cells, read_csv_rows
from pipeline.specs import DatasetSpec

ADAPTER_VERSION = "1.1"
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
           "facial_landmarks", "expression", "valence", "arousal")
LANDMARK_POINTS = 68


def _image_root(root: Path, spec: DatasetSpec) -> Path:
    for candidate in spec.image_dirs:
        if (root / candidate).is_dir():
            return root / candidate
    raise ConfigError(
        f"no AffectNet image folder under {root}; looked for {', '.join(spec.image_dirs)} (spec key image_dirs)"
    )


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _unit_interval(text: str) -> float | None:
    value = _float(text)
    return value if value is not None and -1.0 <= value <= 1.0 else None


def _is_header(cells: list[str]) -> bool:
    return bool(cells) and cells[0].lower() == COLUMNS[0].lower()


def _box_problem(cells: list[str]) -> tuple[list[float] | None, str]:
    """([x, y, w, h], "") or (None, why) for the four box cells."""
    box = [_float(v) for v in cells]
    if any(v is None for v in box):
        return None, f"NULL, non-numeric or non-finite face box {cells}"
    if box[0] < 0 or box[1] < 0:
        return None, f"negative face box origin {cells}"
    if box[2] <= 0 or box[3] <= 0:
        return None, f"face box without area {cells}"
    return box, ""


def box_outside_image(record: SourceRecord, width: int, height: int) -> tuple[str, str] | None:
    """(reason, detail) when the given box has nothing inside the upright width x height image, else None."""
    if record.given_bbox is None:
        return None
    clipped = clip_box(record.given_bbox, width, height)
    if clipped[2] > 0 and clipped[3] > 0:
        return None
    box = [round(float(v), 2) for v in record.given_bbox]
    return "box_outside_image", f"face box {box} lies wholly outside the {width}x{height} image"


def _landmarks(text: str) -> tuple[np.ndarray | None, str]:
    """([2P] float32 or None when the field is empty, "") or (None, why) when present but unusable."""
    tokens = [t for t in text.split(";") if t.strip()]
    if not tokens or (len(tokens) == 1 and tokens[0].upper() == "NULL"):
        return None, ""
    points = [_float(t) for t in tokens]
    if len(points) != 2 * LANDMARK_POINTS or any(p is None for p in points):
        return None, f"{len(points)} values (need {2 * LANDMARK_POINTS} finite numbers: 68 x;y points)"
    return np.asarray(points, dtype=np.float32), ""   # [136] x, y interleaved


def _label_verdict(native: str, relpath: str, spec: DatasetSpec, scan: SourceScan) -> int | None:
    """The canonical label, or None after recording the row as excluded or quarantined."""
    if native in spec.excluded:
        scan.exclusions[spec.excluded[native]] += 1
        return None
    label = spec.label_of(native)
    if label is None:
        if native in spec.class_map:  # a real class outside this view (contempt in 7-class)
            scan.exclusions[f"{spec.class_map[native]}_outside_{spec.num_classes}_class_view"] += 1
        else:
            valid = ", ".join(sorted(spec.class_map, key=lambda k: (len(k), k)))
            scan.quarantine_row(relpath, "label_outside_class_set", f"expression {native!r}; valid: {valid}")
    return label


def _parse_row(cells: list[str], where: str, split: str, spec: DatasetSpec, scan: SourceScan) -> SourceRecord | None:
    """One data row -> a record, or None after recording exactly one verdict for it."""
    if not any(cells):
        scan.exclusions["empty_row"] += 1
        return None
    if _is_header(cells):
        scan.exclusions["repeated_header"] += 1
        return None
    cells = fit_cells(cells, len(COLUMNS))
    relpath = cells[0] or where
    if len(cells) != len(COLUMNS) or not cells[0]:
        scan.quarantine_row(relpath, "malformed_row",
                            f"{where}: {len(cells)} fields, expected {len(COLUMNS)} with a non-empty path")
        return None
    label = _label_verdict(cells[6], relpath, spec, scan)
    if label is None:
        return None
    box, problem = _box_problem(cells[1:5])
    if box is None:
        scan.quarantine_row(relpath, "bad_box", f"{where}: {problem}")
        return None
    landmarks, problem = _landmarks(cells[5])
    if problem:
        scan.quarantine_row(relpath, "bad_landmarks", f"{where}: {problem}")
        return None
    return SourceRecord(
        relpath=relpath, split=split, label=label, source_label=cells[6],
        valence=_unit_interval(cells[7]), arousal=_unit_interval(cells[8]),
        given_bbox=np.asarray(box, dtype=np.float32), given_landmarks=landmarks,
    )


def scan_affectnet(root: Path, spec: DatasetSpec, work_dir: Path) -> SourceScan:
    """Read both label files into records; images are validated later by build_samples."""
    scan = SourceScan(image_root=_image_root(root, spec), landmark_points=LANDMARK_POINTS, inputs=0,
                      with_va=True, with_given_box=True, params={"adapter": f"affectnet@{ADAPTER_VERSION}"},
                      check_record=box_outside_image)
    for split, relfile in spec.splits.items():
        path = root / relfile
        if not path.is_file():
            raise ConfigError(f"AffectNet split file for {split!r} not found: {path} (spec key splits.{split})")
        scan.label_files.append(path)
        rows = read_csv_rows(path)
        if rows and _is_header(rows[0][1]):
            rows = rows[1:]
        for line_no, cells in rows:
            scan.inputs += 1
            record = _parse_row(cells, f"{path.name}:{line_no}", split, spec, scan)
            if record is not None:
                scan.records.append(record)
    return scan
