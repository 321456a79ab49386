"""Per-image stages over shards, and the assembly of their stored parts into a version's tables.

A shard is a slice of samples.parquet plus a `key` column (the sample's input key, see pipeline.store).
Each per-image stage's `part` (pipeline.stages.base) runs the stage on one shard and returns a `Part`
keyed by input key (`by_key`, `quarantine_by_key`); its `assemble` joins the stored parts back onto the
current version's sample ids (`assemble_table`, `with_sample_ids`, `quarantine_rows`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.contract.tables import QuarantineRow, write_table
from pipeline.store.parts import PartStore, input_keys

log = logging.getLogger(__name__)


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


def by_key(table: pa.Table, keys: list[str]) -> pa.Table:
    """Replace `sample_id` (the shard's ids) with the shard's input keys."""
    position = {sid: key for sid, key in zip(table.column("sample_id").to_pylist(), keys)}
    return table.drop_columns(["sample_id"]).append_column(
        "key", pa.array([position[s] for s in table.column("sample_id").to_pylist()], pa.string()))


def quarantine_by_key(rows: list[QuarantineRow], shard: pa.Table) -> list[tuple[str, str, str]]:
    key_of = dict(zip(shard.column("sample_id").to_pylist(), shard.column("key").to_pylist()))
    return [(key_of[r.sample_id], r.reason, r.detail) for r in rows]


def with_sample_ids(rows: pa.Table, samples: pa.Table, keys: list[str]) -> pa.Table:
    """Expand key-indexed rows onto every sample holding that key, ordered by sample_id."""
    row_of = {k: i for i, k in enumerate(rows.column("key").to_pylist())}
    take, sample_ids = [], []
    for sample_id, key in zip(samples.column("sample_id").to_pylist(), keys):
        if key in row_of:
            take.append(row_of[key])
            sample_ids.append(sample_id)
    table = rows.take(pa.array(take, pa.int64())).drop_columns(["key"])
    return table.add_column(0, "sample_id", pa.array(sample_ids, pa.int64()))


def quarantine_rows(found: list[tuple[str, str, str]], samples: pa.Table, keys: list[str],
                     stage: str) -> list[QuarantineRow]:
    reasons = {k: (r, d) for k, r, d in found}
    return [QuarantineRow(relpath, stage, *reasons[key], sample_id=sid) for sid, relpath, key in zip(
        samples.column("sample_id").to_pylist(), samples.column("relpath").to_pylist(), keys) if key in reasons]


def assemble_table(store: PartStore, samples: pa.Table, keys: list[str], usable: np.ndarray | None, out_dir: Path,
                   config=None, *, table: str, stage: str) -> tuple[list[QuarantineRow], None]:
    """A per-image stage's table (`out_dir / table`): rows for usable samples, with sample ids; its quarantine.

    The signature of a Stage's `assemble` (pipeline.stages.base), with `table` and `stage` bound."""
    if usable is None:
        usable = np.ones(len(keys), dtype=bool)
    out_path = Path(out_dir) / table
    wanted = [k for k, ok in zip(keys, usable) if ok]
    rows, quarantine = store.gather(list(dict.fromkeys(wanted)))
    subset = samples.filter(pa.array(usable))
    rows = with_sample_ids(rows, subset, [k for k, ok in zip(keys, usable) if ok])
    write_table(out_path, rows)
    return quarantine_rows(quarantine, subset, wanted, stage), None

