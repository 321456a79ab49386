"""What every source adapter shares: text reading, records, image validation, and the samples table.

An adapter turns a dataset's native files into `SourceRecord`s, exclusions and quarantine rows
(`SourceScan`), counting every input row (or file) it read in `SourceScan.inputs`. Text files are read
through `read_text_lines` / `read_csv_rows`, which drop a byte-order mark, accept LF, CRLF and CR line
ends and tab-delimited CSV, and never let one bad line (a stray quote, a NUL) swallow its neighbours.
`build_samples` then validates every image (missing, empty, truncated, not an image, path escaping the
root, duplicates), hashes it through the stat cache, assigns dense sample ids in a stable order (split,
then path) and returns the samples table per DESIGN.md. Every input ends kept, quarantined or excluded.
"""
from __future__ import annotations

import codecs
import csv
import logging
import re
import stat
import string
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from pipeline.contract.classes import SPLITS
from pipeline.contract.errors import ConfigError, DataError, FerError
from pipeline.contract.tables import QuarantineRow, samples_schema, vectors_to_arrow
from pipeline.images import max_image_pixels, probe
from pipeline.specs import DatasetSpec
from pipeline.store.hashing import HashCache

log = logging.getLogger(__name__)
STAGE = "sources"
BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
CELL_STRIP = string.whitespace + "\ufeff"      # a BOM left inside a line (concatenated files) is junk
ESCAPE_REASON = "path_escapes_root"
NAME_REASON = "file_name_not_utf8"
RecordCheck = Callable[["SourceRecord", int, int], "tuple[str, str] | None"]


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every line that is not blank.

    A UTF-8 or UTF-16 byte-order mark is removed (it never becomes part of the first row), LF, CRLF and
    CR line ends are all line ends, undecodable bytes become U+FFFD, and lines holding only whitespace
    (trailing blank lines included) are no rows.
    """
    data = Path(path).read_bytes()
    encoding = "utf-8"
    for bom, name in BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom):], name
            break
    text = data.decode(encoding, errors="replace")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip(CELL_STRIP)]


def split_csv_line(line: str, delimiter: str = ",") -> list[str]:
    """One line's cells, each stripped of whitespace; a quote never spans into the next line."""
    try:
        cells = next(csv.reader([line], delimiter=delimiter))
    except csv.Error:
        cells = line.split(delimiter)
    return [cell.strip(CELL_STRIP) for cell in cells]


def read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank line; tab-delimited when the first line has tabs, no commas."""
    lines = read_text_lines(path)
    first = lines[0][1] if lines else ""
    delimiter = "\t" if "\t" in first and "," not in first else ","
    return [(number, split_csv_line(text, delimiter)) for number, text in lines]


def fit_cells(cells: list[str], count: int) -> list[str]:
    """Drop empty trailing cells beyond `count` (spreadsheet exports add them); other lengths stay as they are."""
    if len(cells) > count and not any(cells[count:]):
        return cells[:count]
    return cells


def unsafe_relpath(relpath: str) -> str | None:
    """Why a listed name cannot name a file under the dataset root, or None when it can (purely lexical)."""
    if not relpath:
        return "empty path"
    if "\x00" in relpath:
        return "NUL character in path"
    if relpath.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relpath):
        return f"absolute path {relpath!r}"
    if any(part in (".", "..") for part in re.split(r"[/\\]", relpath)):
        return f"'.' or '..' component in {relpath!r}"
    return None


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes a file name held that are not UTF-8 (lone surrogates) become `\\xNN`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def normal_relpath(relpath: str) -> str:
    """`a//b` and `a/b/` name the same file as `a/b` (so duplicates are caught)."""
    return str(PurePosixPath(relpath))


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
    inputs: int | None = None                               # input rows (or files) read; None: not counted
    label_files: list[Path] = field(default_factory=list)   # files whose content defines the labels
    landmark_points: int = 0
    with_va: bool = False
    with_votes: bool = False
    with_given_box: bool = False
    with_true_aus: bool = False
    params: dict = field(default_factory=dict)              # literal parameters for the fingerprint
    check_record: RecordCheck | None = None   # adapter's check of a record against its image's (width, height)

    def quarantine_row(self, relpath: str, reason: str, detail: str = "") -> None:
        """One quarantine row; a name that is not UTF-8 is written with its odd bytes as `\\xNN`."""
        self.quarantine.append(QuarantineRow(relpath=printable(relpath), stage=STAGE, reason=reason,
                                             detail=printable(detail)))


def _check_image(path: Path) -> tuple[str | None, str, int, int]:
    """(reason or None, detail, upright width, height): a full decode through the one image reader."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "missing_file", "no such file", 0, 0
    except OSError as exc:
        return "unreadable_file", f"{type(exc).__name__}: {exc.strerror}", 0, 0
    if not stat.S_ISREG(info.st_mode):   # a folder, FIFO or device: never opened (a FIFO would block)
        return "not_a_regular_file", f"mode {stat.filemode(info.st_mode)}", 0, 0
    try:
        found = probe(path)
    except ConfigError:       # the run's settings (the pixel limit), not this image
        raise
    except Exception as exc:  # noqa: BLE001 - a decoder failing on one file must not stop the scan
        return "truncated_or_corrupt_image", f"{type(exc).__name__}: {exc}", 0, 0
    return found.reason, found.detail, found.width, found.height


def _inside(root: Path, relpath: str) -> tuple[Path | None, str]:
    """(resolved path, "") if it stays inside root, else (None, why): catches symlinks pointing out."""
    try:
        candidate = (root / relpath).resolve()
    except (RuntimeError, OSError):   # a symlink loop
        return None, "cannot be resolved (a symlink loop)"
    if not candidate.is_relative_to(root):
        return None, "resolves outside the image root (a symlink pointing out)"
    return candidate, ""


def _root_free(detail: str, root: Path) -> str:
    """Details name paths relative to the image root: the same id must mean the same bytes on every machine."""
    return detail.replace(f"{root}/", "").replace(str(root), ".")


def _screen(scan: SourceScan, root: Path) -> list[tuple[SourceRecord, Path]]:
    """Records whose path is safe and listed once, with their resolved path; quarantine the others."""
    seen: set[str] = set()
    candidates: list[tuple[SourceRecord, Path]] = []
    for record in scan.records:
        problem = unsafe_relpath(record.relpath)
        if problem:
            scan.quarantine_row(record.relpath, ESCAPE_REASON, problem)
            continue
        if printable(record.relpath) != record.relpath:
            scan.quarantine_row(record.relpath, NAME_REASON, "the file name is not valid UTF-8 (its odd bytes are "
                                                             "shown as \\xNN): rename the file to keep it")
            continue
        record.relpath = normal_relpath(record.relpath)
        path, why = _inside(root, record.relpath)
        if path is None:
            scan.quarantine_row(record.relpath, ESCAPE_REASON, why)
        elif record.relpath in seen:
            scan.quarantine_row(record.relpath, "duplicate_row", "listed more than once; first kept")
        else:
            seen.add(record.relpath)
            candidates.append((record, path))
    return candidates


def validate_records(scan: SourceScan, cache: HashCache, workers: int = 4,
                     progress: bool = True) -> tuple[list[SourceRecord], list[str], list[tuple[int, int]]]:
    """Keep the records whose image is usable; quarantine the rest. Returns (records, hashes, sizes)."""
    root = scan.image_root.resolve()
    max_image_pixels()                  # a bad limit fails once, here, not once per image
    candidates = _screen(scan, root)

    def check(item: tuple[SourceRecord, Path]) -> tuple[str | None, str, int, int, str]:
        reason, detail, width, height = _check_image(item[1])
        if reason is not None:
            return reason, _root_free(detail, root), width, height, ""
        verdict = scan.check_record(item[0], width, height) if scan.check_record else None
        if verdict is not None:
            return verdict[0], verdict[1], width, height, ""
        try:
            return None, "", width, height, cache.hash(item[1])
        except OSError as exc:   # removed or made unreadable between the check and the hash
            return "unreadable_file", f"{type(exc).__name__}: {exc.strerror}", 0, 0, ""

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


def check_accounting(scan: SourceScan, kept: int) -> None:
    """Every input row (or file) the adapter counted must end kept, quarantined or excluded, once."""
    if scan.inputs is None:
        return
    excluded = sum(scan.exclusions.values())
    if kept + len(scan.quarantine) + excluded != scan.inputs:
        raise FerError(f"sources accounting error in {scan.params.get('adapter')}: {scan.inputs} inputs but "
                       f"{kept} kept + {len(scan.quarantine)} quarantined + {excluded} excluded; please report it")


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
    check_accounting(scan, len(records))
    if not records:
        log.warning("no usable samples in %s", scan.image_root)
    return samples_table(spec, scan, records, hashes, sizes)


def require_samples(source) -> None:
    """A prepare needs samples: a SourceResult with none (an empty label file, every input set aside) is one
    DataError naming the files and what became of their inputs, before any stage runs."""
    if source.samples.num_rows:
        return
    where = ", ".join(Path(p).name for p in source.label_files) or f"the folders under {Path(source.image_root).name}/"
    if not source.inputs:
        raise DataError(f"dataset {source.spec.name!r}: {where} list no samples (an empty file or folder?): "
                        f"nothing to prepare; check the dataset root")
    reasons = Counter(source.quarantine.column("reason").to_pylist())
    quarantined = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) or "none"
    excluded = ", ".join(f"{key} {count}" for key, count in sorted(source.exclusions.items())) or "none"
    raise DataError(f"dataset {source.spec.name!r}: none of the {source.inputs} inputs in {where} is usable "
                    f"(quarantined: {quarantined}; excluded: {excluded}): nothing to prepare")
