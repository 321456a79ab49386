"""FERPlus adapter: FER2013 pixels (fer2013.csv) with the ten-annotator FER+ labels (fer2013new.csv).

Row i of fer2013new.csv labels row i of fer2013.csv (header rows and blank lines are no rows; a BOM,
CRLF line ends and tab-delimited copies are accepted). When the two files hold different numbers of
rows the pairing is unknowable, so the adapter refuses at once (DataError giving both counts); where
fer2013.csv has a Usage column, a row whose Usage differs from its label row's is quarantined
(`usage_mismatch`) rather than paired. The label is the majority vote over the ten columns (ties go
to the first column in file order); rows with no image name, or whose majority is `unknown` or `NF`,
are excluded and counted. Votes must be finite, non-negative whole numbers, not all zero, else the
row is quarantined (`bad_votes`). Image names are flat file names: one with `..`, an absolute path or
a NUL is quarantined before anything is written. The 8-class vote distribution is kept in `votes`.
The 48x48 grey images are decoded from the pixel strings and written once as PNG files under the
work directory, keyed by the content of both files (a changed label file never reuses a PNG that
another row's pixels filled).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pipeline.contract.atomic import atomic_path
from pipeline.contract.errors import ConfigError, DataError
from pipeline.sources.base import ESCAPE_REASON, SourceRecord, SourceScan, fit_cells, read_csv_rows, unsafe_relpath
from pipeline.specs import DatasetSpec
from pipeline.store.fingerprint import digest_strings
from pipeline.store.hashing import hash_file

log = logging.getLogger(__name__)
ADAPTER_VERSION = "1.1"
SIDE = 48
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                "contempt", "unknown", "NF")
LABEL_FIELDS = 2 + len(VOTE_COLUMNS)
Rows = list[tuple[int, list[str]]]


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


def _pixel_rows(rows: Rows) -> tuple[Rows, int, int | None]:
    """(data rows, pixels column, Usage column or None): the header, when present, names the columns."""
    if rows and rows[0][1] and rows[0][1][0].lower() == "emotion":
        header = [cell.lower() for cell in rows[0][1]]
        pixels = header.index("pixels") if "pixels" in header else 1
        return rows[1:], pixels, header.index("usage") if "usage" in header else None
    return rows, 1, 2


def _label_rows(rows: Rows) -> Rows:
    return rows[1:] if rows and rows[0][1] and rows[0][1][0].lower() == "usage" else rows


def parse_votes(cells: list[str]) -> tuple[np.ndarray | None, str]:
    """([10] float64 counts, "") or (None, why): votes are finite whole numbers >= 0, not all zero."""
    try:
        counts = np.array([float(cell) for cell in cells], dtype=np.float64)
    except ValueError:
        return None, f"non-numeric or empty vote in {cells}"
    if not np.all(np.isfinite(counts)):
        return None, f"non-finite vote in {cells}"
    if np.any(counts < 0):
        return None, f"negative vote in {cells}"
    if np.any(counts != np.round(counts)):
        return None, f"non-integer vote in {cells}"
    if counts.sum() == 0:
        return None, "all ten vote counts are zero"
    return counts, ""


def _votes_record(counts: np.ndarray, name: str, spec: DatasetSpec, split: str,
                  scan: SourceScan) -> SourceRecord | None:
    """Majority label and the [C] vote distribution in canonical order; None after counting an exclusion."""
    winner = VOTE_COLUMNS[int(np.argmax(counts))]
    if winner in spec.excluded:
        scan.exclusions[f"{spec.excluded[winner]}_majority"] += 1
        return None
    label = spec.label_of(winner)
    if label is None:
        scan.exclusions[f"{winner}_outside_{spec.num_classes}_class_view"] += 1
        return None
    ordered = np.zeros(spec.num_classes, dtype=np.float32)  # [C] votes in canonical class order
    for column, count in zip(VOTE_COLUMNS, counts):
        index = spec.label_of(column)
        if index is not None:
            ordered[index] += count
    ordered /= max(ordered.sum(), 1e-6)
    return SourceRecord(relpath=f"{split}/{name}", split=split, label=label, source_label=winner, votes=ordered)


def _label_verdict(cells: list[str], where: str, spec: DatasetSpec, scan: SourceScan) -> SourceRecord | None:
    """One fer2013new.csv row -> a record, or None after recording exactly one verdict for it."""
    cells = fit_cells(cells, LABEL_FIELDS)
    name = cells[1] if len(cells) > 1 else ""
    if len(cells) != LABEL_FIELDS:
        scan.quarantine_row(name or where, "malformed_row",
                            f"{where}: {len(cells)} fields in fer2013new.csv, expected {LABEL_FIELDS}")
        return None
    if not name:
        scan.exclusions["no_image_name"] += 1
        return None
    problem = unsafe_relpath(name)
    if problem:
        scan.quarantine_row(name, ESCAPE_REASON, f"{where}: {problem}")
        return None
    split = spec.usage_to_split.get(cells[0])
    if split is None:
        scan.quarantine_row(name, "unknown_split",
                            f"{where}: Usage {cells[0]!r}; valid: {', '.join(spec.usage_to_split)}")
        return None
    counts, problem = parse_votes(cells[2:])
    if counts is None:
        scan.quarantine_row(name, "bad_votes", f"{where}: {problem}")
        return None
    return _votes_record(counts, name, spec, split, scan)


def _pixels_verdict(cells: list[str], columns: tuple[int, int | None], usage: str, relpath: str,
                    where: str, scan: SourceScan) -> np.ndarray | None:
    """The [48, 48] image of the paired fer2013.csv row, or None after quarantining the pair."""
    pixels, usage_column = columns
    if len(cells) <= pixels or not cells[pixels]:
        scan.quarantine_row(relpath, "missing_pixels", f"{where}: no pixel field")
        return None
    if usage_column is not None and len(cells) > usage_column and cells[usage_column] not in ("", usage):
        scan.quarantine_row(relpath, "usage_mismatch",
                            f"{where}: Usage {cells[usage_column]!r} but fer2013new.csv says {usage!r}")
        return None
    try:
        return decode_pixels(cells[pixels])
    except ValueError as exc:
        reason, _, detail = str(exc).partition(": ")
        scan.quarantine_row(relpath, reason, f"{where}: {detail}")
        return None


def _write_image(path: Path, pixels: np.ndarray) -> None:
    if not path.is_file():
        with atomic_path(path) as tmp:
            Image.fromarray(pixels, mode="L").save(tmp, format="PNG", compress_level=6)


def _read_pair(pixel_file: Path, label_file: Path) -> tuple[Rows, int, int | None, Rows]:
    pixel_rows, pixels, usage = _pixel_rows(read_csv_rows(pixel_file))
    label_rows = _label_rows(read_csv_rows(label_file))
    if not label_rows:
        raise DataError(f"{label_file} holds no label rows")
    if len(pixel_rows) != len(label_rows):
        raise DataError(
            f"FERPlus files differ in row count: {pixel_file.name} has {len(pixel_rows)} data rows and "
            f"{label_file.name} has {len(label_rows)}; row i of one labels row i of the other, so both must "
            "come from the same release with no row added or removed (header and blank lines are not counted)"
        )
    return pixel_rows, pixels, usage, label_rows


def scan_ferplus(root: Path, spec: DatasetSpec, work_dir: Path, progress: bool = True) -> SourceScan:
    """Pair label rows with pixel rows, decode images once, return records + exclusions."""
    pixel_file = root / spec.splits.get("pixels_file", "fer2013.csv")
    label_file = root / spec.splits.get("labels_file", "fer2013new.csv")
    for path, key in ((pixel_file, "pixels_file"), (label_file, "labels_file")):
        if not path.is_file():
            raise ConfigError(f"FERPlus file not found: {path} (spec key splits.{key})")
    pixel_rows, pixels, usage, label_rows = _read_pair(pixel_file, label_file)
    image_root = work_dir / "ferplus-images" / digest_strings([hash_file(pixel_file), hash_file(label_file)])
    scan = SourceScan(image_root=image_root, with_votes=True, label_files=[pixel_file, label_file],
                      inputs=len(label_rows), params={"adapter": f"ferplus@{ADAPTER_VERSION}"})
    pairs = zip(label_rows, pixel_rows)
    for (line_no, cells), (pixel_line, pixel_cells) in tqdm(pairs, total=len(label_rows), desc="ferplus rows",
                                                            unit="row", disable=not progress):
        record = _label_verdict(cells, f"{label_file.name}:{line_no}", spec, scan)
        if record is None:
            continue
        image = _pixels_verdict(pixel_cells, (pixels, usage), cells[0], record.relpath,
                                f"{pixel_file.name}:{pixel_line}", scan)
        if image is None:
            continue
        try:
            _write_image(image_root / record.relpath, image)
        except OSError as exc:   # e.g. a name longer than the file system allows
            scan.quarantine_row(record.relpath, "bad_image_name", f"cannot write {record.relpath!r}: {exc.strerror}")
            continue
        scan.records.append(record)
    return scan
