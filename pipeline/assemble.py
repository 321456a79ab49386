"""Per-image stages over shards, and the assembly of their stored parts into a version's tables.

A shard is a slice of samples.parquet plus a `key` column (the sample's input key, see pipeline.store).
Each `*_part` function runs one stage on one shard and returns a `Part` keyed by input key; the
`assemble_*` functions join stored parts back onto the current version's sample ids.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract.crops import create_crop_store, write_valid_mask
from pipeline.contract.tables import (
    ACTION_UNITS,
    CROPS_DIR,
    FACES,
    LANDMARKS,
    QuarantineRow,
    vectors_to_numpy,
    write_table,
)
from pipeline.store.parts import Part, PartStore, input_keys

log = logging.getLogger(__name__)
USABLE = ("ok", "multi_face")


def sample_keys(samples: pa.Table) -> list[str]:
    """Input keys: image content plus the per-sample inputs a stage reads (given box and landmarks)."""
    extras = []
    for column in ("given_bbox", "given_landmarks"):
        if column in samples.column_names:
            values = samples.column(column).to_pylist()
            extras.append([None if v is None else np.asarray(v, np.float32).tobytes() for v in values])
    return input_keys(samples.column("content_hash").to_pylist(), *extras)


def pending_shards(store: PartStore, samples: pa.Table, keys: list[str], shard_size: int,
                   only: np.ndarray | None = None) -> list[pa.Table]:
    """Shards (samples rows + `key`) whose keys no stored part holds yet, in sample order."""
    done = store.done_keys()
    rows = [i for i, key in enumerate(keys) if key not in done and (only is None or only[i])]
    # a key shared by two samples (same image listed twice under different labels) is computed once
    seen, unique = set(), []
    for i in rows:
        if keys[i] not in seen:
            seen.add(keys[i])
            unique.append(i)
    table = samples.append_column("key", pa.array(keys, pa.string()))
    return [table.take(pa.array(unique[s:s + shard_size], pa.int64())) for s in range(0, len(unique), shard_size)]


def _by_key(table: pa.Table, keys: list[str]) -> pa.Table:
    """Replace `sample_id` (the shard's ids) with the shard's input keys."""
    position = {sid: key for sid, key in zip(table.column("sample_id").to_pylist(), keys)}
    return table.drop_columns(["sample_id"]).append_column(
        "key", pa.array([position[s] for s in table.column("sample_id").to_pylist()], pa.string()))


def _quarantine_by_key(rows: list[QuarantineRow], shard: pa.Table) -> list[tuple[str, str, str]]:
    key_of = dict(zip(shard.column("sample_id").to_pylist(), shard.column("key").to_pylist()))
    return [(key_of[r.sample_id], r.reason, r.detail) for r in rows]


def faces_part(shard: pa.Table, image_root: Path, config, progress: bool = False) -> Part:
    """Detect and align one shard; crops are kept for every row (zeros where no face)."""
    from pipeline.stages.faces import detect_align_shard

    faces, crops, quarantine = detect_align_shard(shard.drop_columns(["key"]), image_root, config, progress=progress)
    keys = shard.column("key").to_pylist()
    return Part(_by_key(faces, keys), _quarantine_by_key(quarantine, shard), {"crops": crops})


def landmarks_part(shard: pa.Table, faces_store: PartStore, config, progress: bool = False) -> Part:
    """Landmarks on one shard's aligned crops (usable faces only)."""
    from pipeline.stages.landmarks import landmarks_shard

    keys = shard.column("key").to_pylist()
    crops = faces_store.gather_array("crops", keys)                   # [B, S, S, 3]
    faces, _ = faces_store.gather(keys)
    table, quarantine = landmarks_shard(crops, shard.column("sample_id").to_numpy(), config,
                                        samples=shard, faces=faces.drop_columns(["key"]).append_column(
                                            "sample_id", shard.column("sample_id")), progress=progress)
    return Part(_by_key(table, keys), _quarantine_by_key(quarantine, shard))


def action_units_part(shard: pa.Table, faces_store: PartStore, landmarks_store: PartStore, config,
                      progress: bool = False) -> Part:
    """Action units on one shard's crops, with its landmarks where the backend uses them."""
    from pipeline.stages.action_units import action_units_shard

    keys = shard.column("key").to_pylist()
    crops = faces_store.gather_array("crops", keys)                   # [B, S, S, 3]
    found, _ = landmarks_store.gather(keys, ["points"])
    points = np.full((len(keys), 68, 2), np.nan, np.float32)          # [B, P, 2]
    if found.num_rows:
        values = vectors_to_numpy(found.column("points"))
        position = {k: i for i, k in enumerate(keys)}
        rows = [position[k] for k in found.column("key").to_pylist()]
        points = np.full((len(keys), values.shape[1] // 2, 2), np.nan, np.float32)
        points[rows] = values.reshape(len(rows), -1, 2)
    table, quarantine = action_units_shard(crops, shard.column("sample_id").to_numpy(), points, config)
    return Part(_by_key(table, keys), _quarantine_by_key(quarantine, shard))


def _with_sample_ids(rows: pa.Table, samples: pa.Table, keys: list[str]) -> pa.Table:
    """Expand key-indexed rows onto every sample holding that key, ordered by sample_id."""
    row_of = {k: i for i, k in enumerate(rows.column("key").to_pylist())}
    take, sample_ids = [], []
    for sample_id, key in zip(samples.column("sample_id").to_pylist(), keys):
        if key in row_of:
            take.append(row_of[key])
            sample_ids.append(sample_id)
    table = rows.take(pa.array(take, pa.int64())).drop_columns(["key"])
    return table.add_column(0, "sample_id", pa.array(sample_ids, pa.int64()))


def _quarantine_rows(found: list[tuple[str, str, str]], samples: pa.Table, keys: list[str],
                     stage: str) -> list[QuarantineRow]:
    reasons = {k: (r, d) for k, r, d in found}
    return [QuarantineRow(relpath, stage, *reasons[key], sample_id=sid) for sid, relpath, key in zip(
        samples.column("sample_id").to_pylist(), samples.column("relpath").to_pylist(), keys) if key in reasons]


def assemble_faces(store: PartStore, samples: pa.Table, keys: list[str], out_dir: Path,
                   crop_size: int) -> tuple[np.ndarray, list[QuarantineRow]]:
    """faces.parquet and crops/ for every sample; returns the usable-face mask [N] and quarantine."""
    rows, quarantine = store.gather(list(dict.fromkeys(keys)))
    faces = _with_sample_ids(rows, samples, keys)
    write_table(out_dir / FACES, faces)
    usable = np.isin(faces.column("status").to_numpy(zero_copy_only=False), USABLE)
    crops = create_crop_store(out_dir / CROPS_DIR, samples.num_rows, crop_size)
    store.gather_array("crops", keys, out=crops)
    crops.flush()
    write_valid_mask(out_dir / CROPS_DIR, usable)
    return usable, _quarantine_rows(quarantine, samples, keys, "faces")


def assemble_table(store: PartStore, samples: pa.Table, keys: list[str], usable: np.ndarray, out_path: Path,
                   stage: str) -> list[QuarantineRow]:
    """landmarks.parquet / action_units.parquet: rows for usable samples, with sample ids."""
    wanted = [k for k, ok in zip(keys, usable) if ok]
    rows, quarantine = store.gather(list(dict.fromkeys(wanted)))
    subset = samples.filter(pa.array(usable))
    table = _with_sample_ids(rows, subset, [k for k, ok in zip(keys, usable) if ok])
    write_table(out_path, table)
    return _quarantine_rows(quarantine, subset, wanted, stage)


def count_status(faces: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(faces.column("status")).to_pylist()
    return {item["values"]: item["counts"] for item in counts}


__all__ = ["ACTION_UNITS", "LANDMARKS", "action_units_part", "assemble_faces", "assemble_table",
           "faces_part", "landmarks_part", "pending_shards", "sample_keys"]
