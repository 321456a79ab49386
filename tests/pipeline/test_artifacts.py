"""Parquet round trips of the artefact tables: dtypes, fixed-size vectors, nulls and metadata."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.contract.crops import create_crop_store, open_crops, read_valid_mask, write_valid_mask
from pipeline.contract.errors import ArtifactError
from pipeline.contract.graphs import graph_table, read_graph
from pipeline.contract.tables import (
    QuarantineRow,
    append_quarantine,
    labels_table,
    read_metadata,
    read_table,
    samples_schema,
    vectors_to_arrow,
    vectors_to_numpy,
    write_table,
)


def test_vectors_round_trip_with_nulls():
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    column = vectors_to_arrow(values, valid=np.array([True, False, True, True]))
    assert column.type == pa.list_(pa.float32(), 3) and column.null_count == 1
    back = vectors_to_numpy(column)
    np.testing.assert_array_equal(back[[0, 2, 3]], values[[0, 2, 3]])
    assert np.isnan(back[1]).all()
    np.testing.assert_array_equal(vectors_to_numpy(vectors_to_arrow(values)), values)


def test_write_table_keeps_schema_and_metadata(tmp_path):
    schema = samples_schema(8, with_va=True, with_votes=True, with_given_box=False)
    assert schema.field("votes").type == pa.list_(pa.float32(), 8)
    table = pa.table({"x": pa.array([1, 2], pa.int8()), "v": vectors_to_arrow(np.ones((2, 4), np.float32))})
    path = write_table(tmp_path / "t.parquet", table, {"space": "au", "k": 4, "recall": 0.99})
    back = read_table(path)
    assert back.schema.field("x").type == pa.int8() and back.schema.field("v").type == pa.list_(pa.float32(), 4)
    assert read_metadata(path) == {"space": "au", "k": 4, "recall": 0.99}
    with pytest.raises(ArtifactError, match="artefact not found"):
        read_table(tmp_path / "missing.parquet")


def test_graph_and_labels_tables(tmp_path):
    neighbors = np.array([[1, 2], [0, 2], [1, 0]])
    distances = np.array([[0.5, 1.0], [0.5, 0.7], [0.7, 1.0]], dtype=np.float32)
    path = write_table(tmp_path / "g.parquet", graph_table(np.arange(3), neighbors, distances, np.exp(-distances)),
                       {"space": "au"})
    graph = read_graph(path)
    assert graph.neighbors.dtype == np.int64 and graph.neighbors.shape == (3, 2)
    np.testing.assert_array_equal(graph.neighbors, neighbors)
    assert graph.metadata["space"] == "au"
    labels = labels_table(np.arange(3), np.array([0, 2, 1]), np.array([0, 1, 1]))
    assert labels.column("flipped").to_pylist() == [False, True, False]


def test_quarantine_append_deduplicates(tmp_path):
    path = tmp_path / "q.parquet"
    row = QuarantineRow("a.jpg", "faces", "no_face", "", 3)
    append_quarantine(path, [row])
    append_quarantine(path, [row, QuarantineRow("b.jpg", "sources", "missing_file")])
    table = read_table(path)
    assert table.num_rows == 2 and table.column("reason").to_pylist() == ["no_face", "missing_file"]


def test_crop_store_round_trip(tmp_path):
    store = create_crop_store(tmp_path / "crops", 3, 8)
    store[1] = 7
    store.flush()
    write_valid_mask(tmp_path / "crops", np.array([False, True, False]))
    crops = open_crops(tmp_path / "crops")
    assert crops.shape == (3, 8, 8, 3) and crops.dtype == np.uint8 and crops[1].min() == 7 and crops[0].max() == 0
    assert read_valid_mask(tmp_path / "crops").tolist() == [False, True, False]
    with pytest.raises(ArtifactError, match="no crop store"):
        open_crops(tmp_path / "nothing")
