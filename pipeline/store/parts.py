"""A content-addressed store of per-image stage results, so finished work is never redone.

Per-image stages (faces, landmarks, action units) write their results in parts: one folder per shard,
holding `rows.parquet` (a `key` column plus the stage's columns), `quarantine.parquet` (key, reason,
detail) and optional arrays (`<name>.npy`, e.g. the aligned crops). A part is written into a temporary
folder and renamed into place, so it is either complete or absent: a run killed midway keeps every
finished part and a rerun computes only the keys no part holds yet.

Rows are keyed by a sample's *input key* (its image content hash plus whatever per-sample inputs the
stage reads, such as a given face box), never by sample id, so adding images to a dataset reuses every
result already computed for the old ones. The store's folder name carries the fingerprint of the stage's
parameters chained with its upstream stages', so changing a parameter starts a new store.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.contract.atomic import atomic_path
from pipeline.contract.errors import ArtifactError
from pipeline.contract.tables import read_table, write_table

PART_PREFIX = "part-"
PART_QUARANTINE_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


def input_keys(content_hash: list[str], *extras: list[bytes | None]) -> list[str]:
    """One key per sample: hash of its content hash and optional per-sample input bytes."""
    keys = []
    for i, digest in enumerate(content_hash):
        h = hashlib.blake2b(digest.encode(), digest_size=16)
        for extra in extras:
            h.update(b"|" + (extra[i] or b""))
        keys.append(h.hexdigest())
    return keys


@dataclass
class Part:
    """One shard's results, ready to be written."""

    rows: pa.Table                                   # must have a `key` column
    quarantine: list[tuple[str, str, str]] = field(default_factory=list)   # (key, reason, detail)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)            # row-aligned with `rows`


class PartStore:
    """The parts of one per-image stage under `directory` (see module docstring)."""

    def __init__(self, directory: str | Path, names: list[str] | None = None):
        self.directory = Path(directory)
        self.names = None if names is None else sorted(names)   # only these parts (see key_index)

    def parts(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        if self.names is not None:
            return [path for path in (self.directory / name for name in self.names) if path.is_dir()]
        return sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith(PART_PREFIX))

    def _part_keys(self, part: Path) -> list[str]:
        """The keys one part holds, as result rows then quarantine rows."""
        return [key for table in ("rows.parquet", "quarantine.parquet")
                for key in read_table(part / table, ["key"]).column("key").to_pylist()]

    def done_keys(self) -> set[str]:
        """Every key some finished part holds, as a result row or a quarantine row."""
        return {key for part in self.parts() for key in self._part_keys(part)}

    def key_index(self) -> dict[str, list[str]]:
        """key -> names of the parts holding it, from one read of every part.

        A reader of a few keys hands `PartStore(directory, names)` the parts it needs: gathering from the
        whole store reads every part's keys, so a stage of many shards reading its upstream store per
        shard would cost quadratically in the number of parts (bench/results/scale.md).
        """
        index: dict[str, list[str]] = {}
        for part in self.parts():
            for key in self._part_keys(part):
                index.setdefault(key, []).append(part.name)
        return index

    def write(self, part: Part) -> Path:
        """Write a part atomically; its name is the hash of its keys, so a rewrite is idempotent."""
        keys = part.rows.column("key").to_pylist() + [q[0] for q in part.quarantine]
        name = PART_PREFIX + hashlib.blake2b("\n".join(sorted(keys)).encode(), digest_size=12).hexdigest()
        final = self.directory / name
        if final.is_dir():
            return final
        for array_name, values in part.arrays.items():
            if len(values) != part.rows.num_rows:
                raise ArtifactError(f"array {array_name!r} has {len(values)} rows, the part {part.rows.num_rows}")
        quarantine = pa.table([list(c) for c in zip(*part.quarantine)] if part.quarantine else [[], [], []],
                              schema=PART_QUARANTINE_SCHEMA)
        with atomic_path(final, directory=True) as tmp:     # another worker may finish the same part first
            write_table(tmp / "rows.parquet", part.rows)
            write_table(tmp / "quarantine.parquet", quarantine)
            for array_name, values in part.arrays.items():
                np.save(tmp / f"{array_name}.npy", values)
        return final

    def gather(self, keys: list[str], columns: list[str] | None = None) -> tuple[pa.Table, list[tuple[str, str, str]]]:
        """Result rows for `keys` (in that order; keys without a row are left out) and their quarantine rows."""
        wanted = set(keys)
        tables, quarantine = [], []
        for part in self.parts():
            rows = read_table(part / "rows.parquet", columns and ["key", *columns])
            mask = pa.array([k in wanted for k in rows.column("key").to_pylist()], type=pa.bool_())
            tables.append(rows.filter(mask))
            q = read_table(part / "quarantine.parquet")
            quarantine += [(k, r, d) for k, r, d in zip(*(q.column(c).to_pylist() for c in ("key", "reason", "detail")))
                           if k in wanted]
        if not tables:
            return pa.table({"key": pa.array([], pa.string())}), quarantine
        table = pa.concat_tables(tables).combine_chunks()
        position = {k: i for i, k in enumerate(table.column("key").to_pylist())}
        order = [position[k] for k in keys if k in position]
        return table.take(pa.array(order, type=pa.int64())), quarantine

    def gather_array(self, name: str, keys: list[str], out: np.ndarray | None = None) -> np.ndarray:
        """Rows of array `name` for `keys` (each must have a result row), copied in order into `out`."""
        located: dict[str, tuple[Path, int]] = {}
        for part in self.parts():
            for row, key in enumerate(read_table(part / "rows.parquet", ["key"]).column("key").to_pylist()):
                located[key] = (part, row)
        missing = [k for k in keys if k not in located]
        if missing:
            raise ArtifactError(f"{len(missing)} keys have no {name!r} rows in {self.directory}, e.g. {missing[:3]}")
        by_part: dict[Path, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            part, row = located[key]
            by_part.setdefault(part, []).append((position, row))
        result = out
        for part, pairs in by_part.items():
            values = np.load(part / f"{name}.npy", mmap_mode="r")
            if result is None:
                result = np.zeros((len(keys), *values.shape[1:]), dtype=values.dtype)
            positions, rows = (np.array(x) for x in zip(*pairs))
            result[positions] = values[rows]
        if result is None:
            raise ArtifactError(f"no parts with array {name!r} in {self.directory}")
        return result
