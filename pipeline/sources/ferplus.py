"""FERPlus adapter: FER2013 pixels (fer2013.csv) with the ten-annotator FER+ labels (fer2013new.csv).

Row i of fer2013new.csv labels row i of fer2013.csv. The label is the majority vote over the ten
columns (ties go to the first column in file order); rows with no image name, or whose majority is
`unknown` or `NF`, are excluded and counted. The 8-class vote distribution is kept in `votes`.
The 48x48 grey images are decoded from the pixel strings and written once as PNG files under the
work directory (keyed by the pixel file's content hash), so later runs reuse them.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pipeline.contract.errors import ConfigError, DataError
from pipeline.sources.base import SourceRecord, SourceScan
from pipeline.specs import DatasetSpec
from pipeline.store.hashing import hash_file

log = logging.getLogger(__name__)
ADAPTER_VERSION = "1.0"
SIDE = 48
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                "contempt", "unknown", "NF")


def decode_pixels(text: str) -> np.ndarray:
    """'0 12 255 ...' (2,304 ints) -> [48, 48] uint8; raises ValueError with the reason."""
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"undecodable_pixels: {exc}") from None
    if values.size != SIDE * SIDE:
        raise ValueError(f"wrong_pixel_count: {values.size} values, expected {SIDE * SIDE}")
    if values.min() < 0 or values.max() > 255:
        raise ValueError("undecodable_pixels: values outside 0..255")
    return values.reshape(SIDE, SIDE).astype(np.uint8)


def _read_rows(path: Path, header_first: str) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        rows = list(csv.reader(handle))
    if rows and rows[0] and rows[0][0].strip() == header_first:
        rows = rows[1:]
    return rows


def _votes_record(row: list[str], spec: DatasetSpec, split: str) -> tuple[SourceRecord | None, str]:
    """Parse one fer2013new.csv row; returns (record or None, exclusion/quarantine reason)."""
    counts = np.array([float(v) for v in row[2:2 + len(VOTE_COLUMNS)]], dtype=np.float32)
    winner = VOTE_COLUMNS[int(np.argmax(counts))]
    if winner in spec.excluded:
        return None, f"exclude:{spec.excluded[winner]}_majority"
    label = spec.label_of(winner)
    if label is None:
        return None, f"exclude:{winner}_outside_{spec.num_classes}_class_view"
    ordered = np.zeros(spec.num_classes, dtype=np.float32)  # [C] votes in canonical class order
    for column, count in zip(VOTE_COLUMNS, counts):
        index = spec.label_of(column)
        if index is not None:
            ordered[index] += count
    ordered /= max(ordered.sum(), 1e-6)
    relpath = f"{split}/{row[1].strip()}"
    return SourceRecord(relpath=relpath, split=split, label=label, source_label=winner, votes=ordered), ""


def _write_image(path: Path, pixels: np.ndarray) -> None:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(pixels, mode="L").save(tmp, format="PNG", compress_level=6)
        tmp.replace(path)


def scan_ferplus(root: Path, spec: DatasetSpec, work_dir: Path, progress: bool = True) -> SourceScan:
    """Pair label rows with pixel rows, decode images once, return records + exclusions."""
    pixel_file = root / spec.splits.get("pixels_file", "fer2013.csv")
    label_file = root / spec.splits.get("labels_file", "fer2013new.csv")
    for path, key in ((pixel_file, "pixels_file"), (label_file, "labels_file")):
        if not path.is_file():
            raise ConfigError(f"FERPlus file not found: {path} (spec key splits.{key})")
    image_root = work_dir / "ferplus-images" / hash_file(pixel_file)
    scan = SourceScan(image_root=image_root, with_votes=True, label_files=[pixel_file, label_file],
                      params={"adapter": f"ferplus@{ADAPTER_VERSION}"})
    pixels = _read_rows(pixel_file, "emotion")
    labels = _read_rows(label_file, "Usage")
    if not labels:
        raise DataError(f"{label_file} holds no label rows")
    if len(pixels) != len(labels):
        log.warning("fer2013.csv has %d rows and fer2013new.csv %d; unmatched rows are quarantined",
                    len(pixels), len(labels))
    for i, row in enumerate(tqdm(labels, desc="ferplus rows", unit="row", disable=not progress)):
        name = row[1].strip() if len(row) > 1 else ""
        if len(row) < 2 + len(VOTE_COLUMNS):
            scan.quarantine_row(name or f"row {i}", "malformed_row", f"{len(row)} fields in fer2013new.csv")
            continue
        if not name:
            scan.exclusions["no_image_name"] += 1
            continue
        split = spec.usage_to_split.get(row[0].strip())
        if split is None:
            scan.quarantine_row(name, "unknown_split", f"Usage {row[0]!r}")
            continue
        try:
            record, reason = _votes_record(row, spec, split)
        except ValueError as exc:
            scan.quarantine_row(name, "malformed_row", f"votes: {exc}")
            continue
        if record is None:
            scan.exclusions[reason.split(":", 1)[1]] += 1
            continue
        if i >= len(pixels) or len(pixels[i]) < 2:
            scan.quarantine_row(record.relpath, "missing_pixels", f"no fer2013.csv row {i}")
            continue
        try:
            _write_image(image_root / record.relpath, decode_pixels(pixels[i][1]))
        except ValueError as exc:
            reason, _, detail = str(exc).partition(": ")
            scan.quarantine_row(record.relpath, reason, detail)
            continue
        scan.records.append(record)
    return scan
