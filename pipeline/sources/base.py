"""What every source adapter shares: records, image validation, and the samples table.

An adapter turns a dataset's native files into `SourceRecord`s, exclusions and quarantine rows
(`SourceScan`). `build_samples` then validates every image (missing, empty, truncated, not an image,
path escaping the root, duplicates), hashes it through the stat cache, assigns dense sample ids in a
stable order (split, then path) and returns the samples table per DESIGN.md.
"""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from pipeline.contract.classes import SPLITS
from pipeline.contract.tables import QuarantineRow, samples_schema, vectors_to_arrow
from pipeline.specs import DatasetSpec
from pipeline.store.hashing import HashCache

log = logging.getLogger(__name__)
STAGE = "sources"
Image.MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs, allow real photos


@dataclass
class SourceRecord:
    """One labelled image as the dataset lists it, before validation."""

    relpath: str                       # relative to the scan's image_root
    split: str
    label: int                         # canonical index in the spec's class view
    source_label: str                  # the native label, as written in the dataset
    valence: float | None = None
    arousal: float | None = None
    votes: np.ndarray | None = None    # [C] float32 label distribution
    given_bbox: np.ndarray | None = None       # [4] x, y, w, h in source pixels
    given_landmarks: np.ndarray | None = None  # [2P] x, y interleaved in source pixels
    true_aus: np.ndarray | None = None         # [17] synthetic only


@dataclass
class SourceScan:
    """An adapter's output: records to validate, plus what it already excluded or quarantined."""

    image_root: Path
    records: list[SourceRecord] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    exclusions: Counter = field(default_factory=Counter)
    label_files: list[Path] = field(default_factory=list)   # files whose content defines the labels
    landmark_points: int = 0
    with_va: bool = False
    with_votes: bool = False
    with_given_box: bool = False
    with_true_aus: bool = False
    params: dict = field(default_factory=dict)              # literal parameters for the fingerprint

    def quarantine_row(self, relpath: str, reason: str, detail: str = "") -> None:
        self.quarantine.append(QuarantineRow(relpath=relpath, stage=STAGE, reason=reason, detail=detail))


def _check_image(path: Path) -> tuple[str | None, str, int, int]:
    """(reason or None, detail, width, height): a full decode catches truncated files."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing_file", str(path), 0, 0
    if size == 0:
        return "empty_file", "zero bytes", 0, 0
    try:
        with Image.open(path) as image:
            image.load()
            return None, "", int(image.width), int(image.height)
    except UnidentifiedImageError as exc:
        return "not_an_image", str(exc), 0, 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return "truncated_or_corrupt_image", str(exc), 0, 0


def _inside(root: Path, relpath: str) -> Path | None:
    """The resolved path if it stays inside root, else None (catches `../` and absolute paths)."""
    candidate = (root / relpath).resolve()
    try:
        candidate.relative_to(root)
    except ValueError:
        return None
    return candidate


def validate_records(scan: SourceScan, cache: HashCache, workers: int = 4,
                     progress: bool = True) -> tuple[list[SourceRecord], list[str], list[tuple[int, int]]]:
    """Keep the records whose image is usable; quarantine the rest. Returns (records, hashes, sizes)."""
    root = scan.image_root.resolve()
    seen: set[str] = set()
    candidates: list[tuple[SourceRecord, Path]] = []
    for record in scan.records:
        path = _inside(root, record.relpath)
        if path is None:
            scan.quarantine_row(record.relpath, "path_escapes_root", f"resolves outside {root}")
        elif record.relpath in seen:
            scan.quarantine_row(record.relpath, "duplicate_row", "listed more than once; first kept")
        else:
            seen.add(record.relpath)
            candidates.append((record, path))

    def check(item: tuple[SourceRecord, Path]) -> tuple[str | None, str, int, int, str]:
        reason, detail, width, height = _check_image(item[1])
        digest = cache.hash(item[1]) if reason is None else ""
        return reason, detail, width, height, digest

    kept, hashes, sizes = [], [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, candidates)
        bar = tqdm(results, total=len(candidates), desc="validate images", unit="img", disable=not progress)
        for (record, _), (reason, detail, width, height, digest) in zip(candidates, bar):
            if reason is not None:
                scan.quarantine_row(record.relpath, reason, detail)
                continue
            kept.append(record)
            hashes.append(digest)
            sizes.append((width, height))
    cache.commit()
    return kept, hashes, sizes


def _split_rank(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def _vector_column(records: list[SourceRecord], attr: str, dim: int) -> pa.Array:
    values = np.zeros((len(records), dim), dtype=np.float32)
    valid = np.zeros(len(records), dtype=bool)
    for i, record in enumerate(records):
        vector = getattr(record, attr)
        if vector is not None:
            values[i] = vector
            valid[i] = True
    return vectors_to_arrow(values, valid=valid)


def samples_table(spec: DatasetSpec, scan: SourceScan, records: list[SourceRecord],
                  hashes: list[str], sizes: list[tuple[int, int]]) -> pa.Table:
    """Sort validated records by (split, relpath), number them 0..N-1, build samples.parquet's table."""
    order = sorted(range(len(records)), key=lambda i: (_split_rank(records[i].split), records[i].relpath))
    recs = [records[i] for i in order]
    columns: dict[str, pa.Array | list] = {
        "sample_id": pa.array(np.arange(len(recs), dtype=np.int64)),
        "split": [r.split for r in recs],
        "relpath": [r.relpath for r in recs],
        "content_hash": [hashes[i] for i in order],
        "label": pa.array(np.array([r.label for r in recs], dtype=np.int8)),
        "source_label": [r.source_label for r in recs],
    }
    if scan.with_va:
        columns["valence"] = pa.array([r.valence for r in recs], type=pa.float32())
        columns["arousal"] = pa.array([r.arousal for r in recs], type=pa.float32())
    if scan.with_votes:
        columns["votes"] = _vector_column(recs, "votes", spec.num_classes)
    if scan.with_given_box:
        columns["given_bbox"] = _vector_column(recs, "given_bbox", 4)
    if scan.landmark_points:
        columns["given_landmarks"] = _vector_column(recs, "given_landmarks", 2 * scan.landmark_points)
    if scan.with_true_aus:
        columns["true_aus"] = _vector_column(recs, "true_aus", 17)
    columns["width"] = pa.array([sizes[i][0] for i in order], type=pa.int32())
    columns["height"] = pa.array([sizes[i][1] for i in order], type=pa.int32())
    schema = samples_schema(spec.num_classes, scan.with_va, scan.with_votes, scan.with_given_box,
                            scan.landmark_points, scan.with_true_aus)
    return pa.table(columns, schema=schema)


def build_samples_table_from_scan(spec: DatasetSpec, scan: SourceScan, cache: HashCache,
                                  progress: bool = True) -> pa.Table:
    """Validate the scan's images (quarantining the bad ones) and build the samples table."""
    records, hashes, sizes = validate_records(scan, cache, progress=progress)
    if not records:
        log.warning("no usable samples in %s", scan.image_root)
    return samples_table(spec, scan, records, hashes, sizes)
