"""K-NN graph backends: recall against exact search, self exclusion, stable ties, bad input."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from pipeline.contract.errors import BackendMissingError, ConfigError, DataError
from pipeline.knn import KnnConfig, build_knn_graph, clustered_points, exact_knn, recall_at_k, row_distances


def brute_force(x: np.ndarray, k: int) -> np.ndarray:
    """float64 all-pairs reference: sort each row by (distance, index), self excluded."""
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def clustered_20k() -> np.ndarray:
    return clustered_points(20_000, 35, seed=7)


@pytest.fixture(scope="module")
def default_graph(clustered_20k):
    """The default backend (pynndescent) built once: its numba JIT costs ~20-40 s per process."""
    return build_knn_graph(clustered_20k, KnnConfig())


def test_default_backend_recall_on_clustered_20k(clustered_20k, default_graph):
    assert default_graph.backend == "pynndescent"
    assert default_graph.indices.shape == (20_000, 8) and default_graph.indices.dtype == np.int64
    assert recall_at_k(clustered_20k, default_graph.indices, n_queries=2000, seed=1) >= 0.99


def test_default_graph_never_lists_self_and_rows_are_sorted(clustered_20k, default_graph):
    rows = np.arange(len(clustered_20k))[:, None]
    assert not (default_graph.indices == rows).any()
    assert (np.diff(default_graph.distances, axis=1) >= 0).all()
    recomputed = row_distances(clustered_20k, default_graph.indices)
    np.testing.assert_allclose(default_graph.distances, recomputed, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", ["ivf", "hnsw", "flat"])
def test_faiss_backends_reach_recall(index):
    x = clustered_points(6_000, 24, seed=3)
    graph = build_knn_graph(x, KnnConfig(backend="faiss", faiss_index=index, threads=2))
    assert graph.params["index"] == index and graph.params["gpu"] is False
    assert not (graph.indices == np.arange(len(x))[:, None]).any()
    assert recall_at_k(x, graph.indices, n_queries=2000) >= 0.99
    if index == "ivf":   # nprobe 'auto' stops at the first ladder step reaching the target on its sample
        tuning = graph.params["nprobe_tuning"]
        assert graph.params["nprobe"] == tuning[-1][0] and tuning[-1][1] >= 0.995
        assert all(recall < 0.995 for _, recall in tuning[:-1])


def test_exact_matches_float64_brute_force_with_duplicates():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(400, 3)).astype(np.float32)   # many exact duplicates and ties
    graph = build_knn_graph(x, KnnConfig(k=6, backend="exact"))
    np.testing.assert_array_equal(graph.indices, brute_force(x, 6))
    assert recall_at_k(x, graph.indices) == 1.0


def test_ties_are_broken_by_lower_index_on_a_tiny_example():
    # Point 2 (x=3) is 2 from point 1 and 3 from both point 0 and point 3: point 0 wins the tie.
    x = np.array([[0.0], [1.0], [3.0], [6.0]], dtype=np.float32)
    for backend in ("exact", "faiss"):
        graph = build_knn_graph(x, KnnConfig(k=2, backend=backend, faiss_index="flat"))
        np.testing.assert_array_equal(graph.indices, [[1, 2], [0, 2], [1, 0], [2, 1]])
        np.testing.assert_allclose(graph.distances, [[1, 3], [1, 2], [2, 3], [3, 5]])


def test_cosine_metric_gives_cosine_distances():
    x = np.array([[1, 0], [2, 0.1], [0, 1], [-1, 0.05], [0.5, 0.5]], dtype=np.float32)
    graph = build_knn_graph(x, KnnConfig(k=2, backend="exact", metric="cosine"))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = 1.0 - np.einsum("nd,nkd->nk", unit, unit[graph.indices])
    np.testing.assert_allclose(graph.distances, expected, atol=1e-6)
    assert graph.indices[0, 0] == 1 and graph.indices[2, 0] == 4


def test_exact_query_subset_matches_full_search():
    x = clustered_points(3_000, 10, seed=5)
    queries = np.array([0, 17, 2999])
    np.testing.assert_array_equal(exact_knn(x, 5, queries=queries), exact_knn(x, 5)[queries])


def test_recall_of_a_wrong_graph_is_low():
    x = clustered_points(3_000, 10, seed=2)
    rng = np.random.default_rng(0)
    random_graph = (np.arange(3_000)[:, None] + rng.integers(1, 3_000, size=(3_000, 8))) % 3_000
    assert recall_at_k(x, random_graph) < 0.05


def test_nan_and_inf_rows_are_named_by_sample_id():
    x = np.zeros((10, 3), dtype=np.float32)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(DataError, match=r"sample_ids \[103, 107\]"):
        build_knn_graph(x, KnnConfig(k=2, backend="exact"), sample_ids=np.arange(100, 110))


@pytest.mark.parametrize("config, pattern", [
    (KnnConfig(k=10), r"K=10 neighbours need at least K\+1=11 points; got N=10"),
    (KnnConfig(backend="annoy"), r"unknown KNN backend 'annoy'; valid choices: pynndescent, faiss, exact"),
    (KnnConfig(metric="manhattan"), r"unknown KNN metric 'manhattan'; valid choices: euclidean, cosine"),
    (KnnConfig(backend="faiss", faiss_index="pq"), r"unknown faiss index 'pq'"),
    (KnnConfig(backend="faiss", ivf_nprobe=0), r"ivf_nprobe must be a positive integer or 'auto', got 0"),
])
def test_bad_configuration_has_one_clear_message(config, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_knn_graph(np.zeros((10, 2), dtype=np.float32), config)


def test_cosine_rejects_zero_rows():
    x = np.ones((5, 2), dtype=np.float32)
    x[2] = 0
    with pytest.raises(DataError, match=r"sample_ids \[2\]"):
        build_knn_graph(x, KnnConfig(k=2, backend="exact", metric="cosine"))


@pytest.mark.parametrize("backend, module, package", [
    ("pynndescent", "pynndescent", "pynndescent"), ("faiss", "faiss", "faiss-cpu")])
def test_missing_optional_backend_names_the_package(monkeypatch, backend, module, package):
    monkeypatch.setitem(sys.modules, module, None)   # a fake "not installed": import raises ImportError
    with pytest.raises(BackendMissingError, match=f"install the package '{package}"):
        build_knn_graph(np.random.default_rng(0).normal(size=(50, 3)), KnnConfig(k=3, backend=backend))


def test_faiss_gpu_request_without_gpu_is_a_clear_error():
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="use_gpu='yes' but faiss sees no GPU"):
        build_knn_graph(np.random.default_rng(0).normal(size=(50, 3)),
                        KnnConfig(k=3, backend="faiss", use_gpu="yes"))
