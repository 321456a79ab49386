"""Index-similarity lists (graphs/<space>.parquet): the schema, the writer and the one reader.

Row i holds sample i's K nearest neighbours (sample ids), their distances and the similarities
a_ij = exp(-d_ij^2 / (2 sigma^2)); file metadata records how the graph was built and its recall@K.
`read_graph` returns numpy arrays; the trainer wraps them in tensors.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contract.errors import ArtifactError, ConfigError
from pipeline.contract.names import plain_name
from pipeline.contract.tables import (
    GRAPHS_DIR,
    read_metadata,
    read_table,
    vector_type,
    vectors_to_arrow,
    vectors_to_numpy,
    write_table,
)


def graph_schema(k: int) -> pa.Schema:
    return pa.schema([
        ("sample_id", pa.int64()),
        ("neighbors", vector_type(k, pa.int32())),
        ("distances", vector_type(k)),
        ("similarity", vector_type(k)),
    ])


def graph_table(sample_ids: np.ndarray, neighbors: np.ndarray, distances: np.ndarray,
                similarity: np.ndarray) -> pa.Table:
    """[N] ids and [N, K] arrays -> a table in graph_schema(K). Neighbours are sample ids."""
    k = neighbors.shape[1]
    return pa.table({
        "sample_id": pa.array(np.asarray(sample_ids, dtype=np.int64)),
        "neighbors": vectors_to_arrow(neighbors, pa.int32()),
        "distances": vectors_to_arrow(distances),
        "similarity": vectors_to_arrow(similarity),
    }, schema=graph_schema(k))


@dataclass(frozen=True)
class GraphArrays:
    """A graph read back: rows follow `sample_id`; neighbours are sample ids."""

    sample_id: np.ndarray    # [N] int64
    neighbors: np.ndarray    # [N, K] int64
    distances: np.ndarray | None    # [N, K] float32 (None when read without distances)
    similarity: np.ndarray   # [N, K] float32
    metadata: dict


def read_graph(path: str | Path, with_distances: bool = True) -> GraphArrays:
    """Load graphs/<space>.parquet into numpy arrays without Python loops.

    `with_distances=False` skips the distances column (the trainer needs neighbours and similarities).
    """
    if not Path(path).is_file():
        raise ArtifactError(f"graph not found: {path}")
    wanted = graph_schema(1).names if with_distances else ["sample_id", "neighbors", "similarity"]
    missing = [c for c in wanted if c not in pq.read_schema(path).names]
    if missing:
        raise ArtifactError(f"graph {path} lacks columns {missing}")
    table = read_table(path, columns=wanted)
    return GraphArrays(
        sample_id=table.column("sample_id").to_numpy(),
        neighbors=vectors_to_numpy(table.column("neighbors")).astype(np.int64),
        distances=vectors_to_numpy(table.column("distances")) if with_distances else None,
        similarity=vectors_to_numpy(table.column("similarity")),
        metadata=read_metadata(path),
    )


def check_space_name(space: object) -> str:
    """A space name becomes a file name (graphs/<space>.parquet, features/<space>.parquet): a plain name
    (pipeline.contract.names), in lower case so two spaces never share a file on a case-blind disk."""
    name = plain_name("graph space", space)
    if name != name.lower():
        raise ConfigError(f"graph space {name!r} must be lower case (it names a file); use {name.lower()!r}")
    return name


def write_graph(path: str | Path, table: pa.Table, metadata: Mapping[str, object]) -> Path:
    """Write a graph atomically, uncompressed (neighbour ids barely compress; loading stays fast)."""
    return write_table(path, table, metadata, compression="none")


def graph_path(version_dir: str | Path, space: str) -> Path:
    check_space_name(space)
    return Path(version_dir) / GRAPHS_DIR / f"{space}.parquet"
