"""Graphs per space: similarity formula, sigma=auto, Parquet round trip, features per space, diagnostics."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contract import tables as artifacts
from pipeline.contract.errors import ConfigError, DataError
from pipeline.contract.graphs import graph_path, read_graph, write_graph
from pipeline.knn import KnnConfig, clustered_points
from pipeline.stages.graphs import (
    TIMING_KEYS,
    GraphConfig,
    build_and_write_space,
    build_space_graph,
    file_metadata,
    label_agreement,
    procrustes_normalise,
    similarity_from_distances,
    space_features,
    with_knn,
)

EXACT2 = GraphConfig(knn=KnnConfig(k=2, backend="exact"), sigma={"line": "auto", "fixed": 2.0})
LINE = np.array([[0.0], [1.0], [3.0], [6.0]], dtype=np.float32)


def test_similarity_and_sigma_auto_by_hand():
    # Neighbours (K=2): 0 -> 1 (d 1), 2 (d 3); 1 -> 0 (1), 2 (2); 2 -> 1 (2), 0 (3, tie with 3: lower id);
    # 3 -> 2 (3), 1 (5). K-th distances 3, 2, 3, 5: median 3 = sigma.
    table, meta = build_space_graph(LINE, np.array([10, 11, 12, 13]), None, EXACT2, "line")
    assert table.column("neighbors").to_pylist() == [[11, 12], [10, 12], [11, 10], [12, 11]]
    assert table.column("distances").to_pylist() == [[1, 3], [1, 2], [2, 3], [3, 5]]
    assert meta["sigma"] == 3.0 and meta["sigma_mode"] == "auto"
    expected = np.exp(-np.array([[1, 9], [1, 4], [4, 9], [9, 25]]) / (2 * 3.0 ** 2))
    np.testing.assert_allclose(artifacts.vectors_to_numpy(table.column("similarity")), expected, rtol=1e-6)


def test_sigma_from_config_is_used_and_recorded():
    table, meta = build_space_graph(LINE, np.arange(4), None, EXACT2, "fixed")
    assert meta["sigma"] == 2.0 and meta["sigma_mode"] == "config"
    assert table.column("similarity").to_pylist()[0] == pytest.approx([np.exp(-1 / 8), np.exp(-9 / 8)])


def test_sigma_auto_with_all_zero_kth_distances_falls_back():
    similarity, sigma = similarity_from_distances(np.zeros((3, 2), dtype=np.float32), "auto")
    assert sigma == 1.0 and (similarity == 1.0).all()


def test_sigma_is_auto_for_every_space_and_the_paper_values_can_be_set():
    config = GraphConfig()
    assert all(config.sigma_for(space) == "auto" for space in ("au", "landmarks", "va", "my_features"))
    paper = GraphConfig(sigma={"au": 1.0, "landmarks": 68.0})
    assert paper.sigma_for("au") == 1.0 and paper.sigma_for("landmarks") == 68.0
    with pytest.raises(ConfigError, match="positive number or 'auto'"):
        GraphConfig(sigma={"au": -1}).sigma_for("au")


def test_parquet_round_trip_keeps_dtypes_and_metadata(tmp_path):
    x = clustered_points(600, 6, seed=1)
    labels = np.random.default_rng(0).integers(0, 7, 600)
    table, meta = build_space_graph(x, np.arange(600), labels, with_knn(GraphConfig(), backend="exact"), "au")
    path = write_graph(graph_path(tmp_path, "au"), table, file_metadata(meta))
    assert path == tmp_path / "graphs" / "au.parquet"
    schema = pq.read_schema(path)
    assert schema.field("sample_id").type == pa.int64()
    assert schema.field("neighbors").type == pa.list_(pa.int32(), 8)
    assert schema.field("distances").type == pa.list_(pa.float32(), 8)
    assert schema.field("similarity").type == pa.list_(pa.float32(), 8)
    stored = artifacts.read_metadata(path)
    for key in ("space", "K", "metric", "sigma", "backend", "backend_params", "recall_at_k"):
        assert stored[key] == meta[key]
    assert meta["build_seconds"] >= 0 and not set(TIMING_KEYS) & set(stored)   # timings: returned, not stored
    assert stored["recall_at_k"] == 1.0 and stored["recall_queries"] == 600
    light = read_graph(path, with_distances=False)
    assert light.neighbors.dtype == np.int64 and light.similarity.dtype == np.float32
    assert light.neighbors.shape == light.similarity.shape == (600, 8) and light.distances is None
    np.testing.assert_array_equal(light.neighbors, artifacts.vectors_to_numpy(table.column("neighbors")))
    graph = read_graph(path)
    np.testing.assert_array_equal(graph.similarity, light.similarity)
    np.testing.assert_array_equal(graph.distances, artifacts.vectors_to_numpy(table.column("distances")))


def test_label_agreement_by_hand():
    indices = np.array([[1, 2], [0, 2], [3, 0], [2, 1]])
    labels = np.array([0, 0, 1, 1])
    result = label_agreement(indices, labels)
    # row 0: {0 same, 1 diff}; row 1: {same, diff}; row 2: {same, diff}; row 3: {same, diff}
    assert result["overall"] == 0.5
    assert result["per_class"] == {"neutral": 0.5, "happiness": 0.5}
    assert result["chance"] == 0.5


def test_nan_features_name_sample_ids():
    x = clustered_points(50, 4, seed=0)
    x[[5, 9]] = np.nan
    with pytest.raises(DataError, match=r"sample_ids \[1005, 1009\]"):
        build_space_graph(x, np.arange(1000, 1050), None, EXACT2, "line")


def test_k_too_large_and_bad_space_name():
    with pytest.raises(ConfigError, match="K=8 neighbours need at least K\\+1=9 points; got N=4"):
        build_space_graph(LINE, np.arange(4), None, GraphConfig(), "line")
    with pytest.raises(ConfigError, match="is not a plain name"):
        build_space_graph(LINE, np.arange(4), None, EXACT2, "../escape")


def test_procrustes_removes_translation_scale_and_rotation():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(68, 2))
    angle = 0.4
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 3.5 * base @ rotation.T + np.array([40.0, -7.0])
    others = rng.normal(size=(5, 68, 2))
    shapes = np.concatenate([base[None], moved[None], others]).reshape(7, 136)
    out = procrustes_normalise(shapes)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    mirrored = shapes.reshape(7, 68, 2) * np.array([-1.0, 1.0])          # a reflection is not undone
    assert not np.allclose(procrustes_normalise(mirrored.reshape(7, 136))[0], out[0], atol=1e-3)


def _version_tables(n: int = 40) -> dict[str, pa.Table]:
    """Small real-schema tables: samples with VA, landmarks (one null row), action units."""
    rng = np.random.default_rng(3)
    ids = np.arange(n)
    split = np.where(ids < 30, "train", "test")
    samples = pa.table({"sample_id": ids, "split": split, "label": (ids % 7).astype(np.int8),
                        "valence": rng.uniform(-1, 1, n).astype(np.float32),
                        "arousal": rng.uniform(-1, 1, n).astype(np.float32)})
    valid = ids != 4
    landmarks = pa.table({"sample_id": ids[::-1].copy(),       # other row order on purpose
                          "points": artifacts.vectors_to_arrow(rng.uniform(0, 256, (n, 136))[::-1],
                                                               valid=valid[::-1])})
    aus = pa.table({"sample_id": ids, "intensity": artifacts.vectors_to_arrow(rng.uniform(0, 5, (n, 17))),
                    "presence": artifacts.vectors_to_arrow(rng.integers(0, 2, (n, 18)))})
    return {"samples": samples, "landmarks": landmarks, "action_units": aus}


def test_space_features_per_space():
    tables = _version_tables()
    ids, au = space_features("au", tables)
    assert au.shape == (30, 35) and au.dtype == np.float32 and (ids == np.arange(30)).all()
    assert space_features("au17", tables)[1].shape == (30, 17)
    ids, points = space_features("landmarks", tables)
    assert 4 not in ids and len(ids) == 29 and points.shape == (29, 136)
    expected = artifacts.vectors_to_numpy(tables["landmarks"].column("points"))[::-1][ids]
    np.testing.assert_array_equal(points, expected)
    assert space_features("landmarks_procrustes", tables)[1].shape == (29, 136)
    ids, va = space_features("va", tables, splits=None)
    assert va.shape == (40, 2)
    user = pa.table({"sample_id": np.arange(40), "emb": artifacts.vectors_to_arrow(np.ones((40, 5))),
                     "extra": np.arange(40, dtype=np.float64)})
    assert space_features("embedding", tables, user_table=user)[1].shape == (30, 6)
    with pytest.raises(ConfigError, match="unknown graph space 'pose'"):
        space_features("pose", tables)


def test_build_and_write_space_from_a_version_folder(tmp_path):
    for name, table in _version_tables().items():
        artifacts.write_table(tmp_path / f"{name}.parquet", table)
    config = GraphConfig(knn=KnnConfig(k=3, backend="exact"))
    path, _ = build_and_write_space(tmp_path, "landmarks", config)
    stored = artifacts.read_metadata(path)
    assert stored["n_rows"] == 29 and stored["splits"] == ["train"] and stored["sigma_mode"] == "auto"
    spread = stored["similarity_spread"]
    assert spread["p10"] <= spread["median"] <= spread["p90"] and spread["spread"] == pytest.approx(
        spread["p90"] - spread["p10"], abs=1e-5)
    assert set(stored["label_agreement"]["per_class"]) <= {"neutral", "happiness", "sadness", "surprise",
                                                           "fear", "disgust", "anger"}
    graph = read_graph(path)
    assert set(graph.neighbors.ravel()) <= set(graph.sample_id)     # neighbours are train sample ids


def test_metadata_names_the_backend_auto_resolved_to_and_the_measured_recall():
    small, meta = build_space_graph(LINE, np.arange(4), None, GraphConfig(knn=KnnConfig(k=2)), "line")
    assert meta["backend"] == "exact" and meta["backend_requested"] == "auto"
    assert meta["recall_reference"] == "exact" and meta["recall_at_k"] == 1.0 and meta["recall_seconds"] >= 0
    x = clustered_points(21_000, 6, seed=3)                       # above the exact threshold of 'auto'
    _, meta = build_space_graph(x, np.arange(21_000), None, GraphConfig(recall_queries=500), "au")
    assert meta["backend"] == "blocked-ivf" and meta["recall_at_k"] >= 0.99
    params = meta["backend_params"]
    assert params["nlist"] == round(2 * np.sqrt(21_000)) and params["nprobe"] == params["nprobe_tuning"][-1][0]
    assert params["backend"] == "blocked-ivf" and "nnd_neighbors" not in params
