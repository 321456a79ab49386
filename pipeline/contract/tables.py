"""Parquet tables of the artefact contract: names, schemas, writers and readers.

The trainer reads artefacts only through `pipeline.contract`. Fixed-length vectors are stored as
`fixed_size_list<float32>[D]` so a column loads into an [N, D] array without Python loops.
Writes are atomic (pipeline.contract.atomic), so a killed run never leaves a half-written table.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contract.atomic import atomic_path
from pipeline.contract.errors import ArtifactError

SCHEMA_VERSION = "1"

# File names inside <artifacts_root>/<dataset>/<version>/ (DESIGN.md).
SAMPLES = "samples.parquet"
FACES = "faces.parquet"
LANDMARKS = "landmarks.parquet"
ACTION_UNITS = "action_units.parquet"
QUARANTINE = "quarantine.parquet"
MANIFEST = "manifest.json"
CROPS_DIR = "crops"
GRAPHS_DIR = "graphs"
LABELS_DIR = "labels"

QUARANTINE_SCHEMA = pa.schema([
    ("relpath", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("sample_id", pa.int64()),  # null when the input never became a sample
])

FACE_STATUSES = ("ok", "no_face", "multi_face", "unreadable")


def vector_type(dim: int, value_type: pa.DataType = pa.float32()) -> pa.DataType:
    """Arrow type of a fixed-length vector column."""
    return pa.list_(value_type, dim)


def vectors_to_arrow(values: np.ndarray, value_type: pa.DataType = pa.float32(),
                     valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """[N, D] array -> fixed_size_list array; rows where `valid` is False become null."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ArtifactError(f"expected an [N, D] array for a vector column, got shape {values.shape}")
    n, dim = values.shape
    flat = pa.array(values.reshape(-1).astype(value_type.to_pandas_dtype(), copy=False), type=value_type)
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)


def vectors_to_numpy(column: pa.ChunkedArray | pa.Array, fill: float = np.nan) -> np.ndarray:
    """fixed_size_list column -> [N, D] numpy array; null rows become `fill`."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    dim = column.type.list_size
    n = len(column)
    if column.null_count == 0:
        flat = column.flatten() if column.offset == 0 else column.values.slice(column.offset * dim, n * dim)
        return flat.to_numpy(zero_copy_only=False).reshape(n, dim)
    out = np.full((n, dim), fill, dtype=column.type.value_type.to_pandas_dtype())
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    out[valid] = column.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out


def _encode_metadata(metadata: Mapping[str, object] | None) -> dict[bytes, bytes]:
    encoded = {b"fer.schema_version": SCHEMA_VERSION.encode()}
    for key, value in (metadata or {}).items():
        encoded[f"fer.{key}".encode()] = json.dumps(value, sort_keys=True, default=str).encode()
    return encoded


def write_table(path: str | Path, table: pa.Table, metadata: Mapping[str, object] | None = None,
                compression: str = "zstd") -> Path:
    """Write `table` to Parquet atomically, with JSON-encoded `metadata` in the file's key-value store.

    `compression` 'none' suits tables of random-looking numbers read often (graphs): faster to load.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = table.schema.metadata or {}
    table = table.replace_schema_metadata({**existing, **_encode_metadata(metadata)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)
    return path


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet artefact, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artefact not found: {path}")
    return pq.read_table(path, columns=columns, memory_map=True)


def read_metadata(path: str | Path) -> dict[str, object]:
    """The `fer.*` key-value metadata of a Parquet artefact, JSON-decoded, without the prefix."""
    raw = pq.read_schema(Path(path)).metadata or {}
    out: dict[str, object] = {}
    for key, value in raw.items():
        name = key.decode()
        if name.startswith("fer.") and name != "fer.schema_version":
            out[name[4:]] = json.loads(value.decode())
    return out


def table_metadata(table: pa.Table) -> dict[str, object]:
    """Decode the `fer.*` metadata of an in-memory table (same format as read_metadata)."""
    raw = table.schema.metadata or {}
    return {k.decode()[4:]: json.loads(v.decode()) for k, v in raw.items()
            if k.decode().startswith("fer.") and k.decode() != "fer.schema_version"}


@dataclass(frozen=True)
class QuarantineRow:
    """One input that could not be used, and why."""

    relpath: str
    stage: str
    reason: str
    detail: str = ""
    sample_id: int | None = None


def quarantine_table(rows: list[QuarantineRow]) -> pa.Table:
    """Rows -> a table in QUARANTINE_SCHEMA (an empty list gives an empty table)."""
    columns = {name: [getattr(r, name) for r in rows] for name in QUARANTINE_SCHEMA.names}
    return pa.table(columns, schema=QUARANTINE_SCHEMA)


def append_quarantine(path: str | Path, rows: list[QuarantineRow]) -> None:
    """Add rows to an existing quarantine file (or create it), de-duplicating exact repeats."""
    path = Path(path)
    new = quarantine_table(rows)
    if path.is_file():
        new = pa.concat_tables([read_table(path).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA), new])
    frame = new.to_pandas().drop_duplicates(ignore_index=True)
    write_table(path, pa.Table.from_pandas(frame, schema=QUARANTINE_SCHEMA, preserve_index=False))


def samples_schema(num_classes: int, with_va: bool, with_votes: bool,
                   with_given_box: bool, landmark_points: int = 0, with_true_aus: bool = False) -> pa.Schema:
    """Schema of samples.parquet for one dataset's optional columns (DESIGN.md).

    `given_bbox` (x, y, w, h in source pixels), `given_landmarks` ([2P] x,y interleaved in source pixels)
    and `true_aus` (synthetic only) carry what a dataset provides to later stages.
    """
    fields = [
        ("sample_id", pa.int64()), ("split", pa.string()), ("relpath", pa.string()),
        ("content_hash", pa.string()), ("label", pa.int8()), ("source_label", pa.string()),
    ]
    if with_va:
        fields += [("valence", pa.float32()), ("arousal", pa.float32())]
    if with_votes:
        fields.append(("votes", vector_type(num_classes)))
    if with_given_box:
        fields.append(("given_bbox", vector_type(4)))
    if landmark_points:
        fields.append(("given_landmarks", vector_type(2 * landmark_points)))
    if with_true_aus:
        fields.append(("true_aus", vector_type(17)))
    fields += [("width", pa.int32()), ("height", pa.int32())]
    return pa.schema(fields)


def check_columns(table: pa.Table, required: list[str], what: str) -> None:
    """Raise ArtifactError naming the missing columns of an artefact table."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ArtifactError(f"{what} lacks columns {missing}; it has {table.column_names}")


# --- noisy labels (labels/<variant>.parquet) ---

LABELS_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("label", pa.int8()), ("clean_label", pa.int8()), ("flipped", pa.bool_()),
])


def labels_table(sample_ids: np.ndarray, label: np.ndarray, clean_label: np.ndarray) -> pa.Table:
    """A noisy-label variant: `flipped` is derived, so it can never disagree with the labels."""
    label = np.asarray(label, dtype=np.int8)
    clean_label = np.asarray(clean_label, dtype=np.int8)
    return pa.table({
        "sample_id": pa.array(np.asarray(sample_ids, dtype=np.int64)),
        "label": pa.array(label), "clean_label": pa.array(clean_label),
        "flipped": pa.array(label != clean_label),
    }, schema=LABELS_SCHEMA)
