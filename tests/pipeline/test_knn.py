"""K-NN graph backends: registry, recall against exact search, determinism, self exclusion, ties, bad input."""
from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np
import pytest

from pipeline.contract.errors import BackendMissingError, ConfigError, DataError
from pipeline.knn import (BACKENDS, KnnBackend, KnnConfig, build_knn_graph, clustered_points, exact_knn,
                          recall_at_k, resolve, row_distances)
from pipeline.knn.blocked import cell_search, kmeans, nearest_cells, tune_nprobe, tune_sample
from pipeline.knn.kernels import pair_distances, smallest_per_row

BLOCKED = KnnConfig(backend="blocked-ivf", threads=2)


def brute_force(x: np.ndarray, k: int) -> np.ndarray:
    """float64 all-pairs reference: sort each row by (distance, index), self excluded."""
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def clustered_20k() -> np.ndarray:
    return clustered_points(20_000, 35, seed=7)


def test_every_backend_is_one_registered_class():
    assert set(BACKENDS.names()) == {"exact", "blocked-ivf", "faiss", "pynndescent"}
    assert all(issubclass(BACKENDS.get(name), KnnBackend) for name in BACKENDS.names())
    assert BACKENDS.get("exact").margin == 0 and BACKENDS.get("blocked-ivf").margin > 0


def test_auto_picks_exact_for_small_sets_and_blocked_ivf_above():
    assert resolve(KnnConfig(), 20_000, 35).backend == "exact"
    assert resolve(KnnConfig(), 300_000, 35).backend == "blocked-ivf"
    assert resolve(KnnConfig(), 300_000, 136).backend == "blocked-ivf"
    assert resolve(KnnConfig(backend="faiss"), 300_000, 35).backend == "faiss"


def test_blocked_ivf_recall_and_contract_on_clustered_20k(clustered_20k):
    graph = build_knn_graph(clustered_20k, BLOCKED)
    assert graph.backend == "blocked-ivf" and graph.indices.dtype == np.int64
    assert graph.indices.shape == (20_000, 8)
    assert recall_at_k(clustered_20k, graph.indices, n_queries=2000, seed=1) >= 0.99
    rows = np.arange(len(clustered_20k))[:, None]
    assert not (graph.indices == rows).any()
    assert (np.diff(graph.distances, axis=1) >= 0).all()
    np.testing.assert_allclose(graph.distances, row_distances(clustered_20k, graph.indices), rtol=1e-6)
    tuning = graph.params["nprobe_tuning"]            # stops at the first step reaching the target
    assert graph.params["nprobe"] == tuning[-1][0] and tuning[-1][1] >= 0.995
    assert all(recall < 0.995 for _, recall in tuning[:-1])


def test_tuning_predicts_the_search_recall_exactly():
    """A neighbour is found iff its cell is in the probed union: the probe's recall is the search's."""
    x = clustered_points(6_000, 12, seed=4)
    centroids = kmeans(x, 40, 4, 16, seed=0)
    probes = nearest_cells(x, centroids, 3)
    rows, exact = tune_sample(x, 8, 500, seed=1)
    for nprobe in (1, 2, 3):
        _, predicted = tune_nprobe(probes, rows, exact, [nprobe], target=1.0)
        _, found = cell_search(x, probes[:, :nprobe], 40, 8 + 5)
        hits = np.mean([np.isin(exact[i], found[row]).mean() for i, row in enumerate(rows)])
        assert predicted[-1][1] == pytest.approx(hits, abs=1e-9)


@pytest.mark.parametrize("config", [
    BLOCKED, KnnConfig(backend="exact"), replace(BLOCKED, pca_dim=8),
    KnnConfig(backend="faiss", faiss_index="ivf")])
def test_same_bytes_whatever_the_thread_count(config):
    import torch

    x = clustered_points(8_000, 24, seed=11)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = build_knn_graph(x, replace(config, threads=1))
        torch.set_num_threads(2)
        two = build_knn_graph(x, replace(config, threads=2))
    finally:
        torch.set_num_threads(before)
    assert one.indices.tobytes() == two.indices.tobytes()
    assert one.distances.tobytes() == two.distances.tobytes()


def test_pca_pre_step_reranks_in_the_full_space():
    rng = np.random.default_rng(0)
    low = clustered_points(5_000, 6, clusters=16, intrinsic_dim=6, seed=2)      # 6 true dimensions ...
    x = (low @ np.linalg.qr(rng.normal(size=(64, 6)))[0].T).astype(np.float32)  # ... embedded in 64
    x += rng.normal(0, 1e-3, size=x.shape).astype(np.float32)
    graph = build_knn_graph(x, replace(BLOCKED, pca_dim=8))
    assert graph.params["pca_dim"] == 8 and graph.params["pca_explained_variance"] > 0.999
    assert recall_at_k(x, graph.indices) >= 0.99
    np.testing.assert_allclose(graph.distances, row_distances(x, graph.indices), rtol=1e-6)


def test_exact_matches_float64_brute_force_with_duplicates():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(400, 3)).astype(np.float32)   # many exact duplicates and ties
    for backend in ("exact", "blocked-ivf"):
        graph = build_knn_graph(x, KnnConfig(k=6, backend=backend, ivf_nlist=4))
        np.testing.assert_array_equal(graph.indices, brute_force(x, 6))
    assert recall_at_k(x, graph.indices) == 1.0


def test_ties_are_broken_by_lower_index_on_a_tiny_example():
    # Point 2 (x=3) is 2 from point 1 and 3 from both point 0 and point 3: point 0 wins the tie.
    x = np.array([[0.0], [1.0], [3.0], [6.0]], dtype=np.float32)
    for backend in ("exact", "faiss", "blocked-ivf"):
        graph = build_knn_graph(x, KnnConfig(k=2, backend=backend, faiss_index="flat"))
        np.testing.assert_array_equal(graph.indices, [[1, 2], [0, 2], [1, 0], [2, 1]])
        np.testing.assert_allclose(graph.distances, [[1, 3], [1, 2], [2, 3], [3, 5]])


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


@pytest.mark.slow   # pynndescent's numba compile, cold in a fresh FER_CACHE: minutes on 2 shared cores
def test_pynndescent_reaches_recall_and_caches_under_fer_cache():
    x = clustered_points(3_000, 16, seed=5)
    graph = build_knn_graph(x, KnnConfig(backend="pynndescent", nnd_neighbors=12))
    assert graph.params["n_neighbors"] == 13       # at least K + 1 + the tie margin
    assert recall_at_k(x, graph.indices) >= 0.99
    cache = graph.params["numba_cache_dir"]
    assert cache == os.environ.get("NUMBA_CACHE_DIR", os.path.join(os.environ["FER_CACHE"], "numba"))


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
    np.testing.assert_array_equal(exact_knn(x, 5, threads=1), exact_knn(x, 5, threads=2))


def test_kernels_select_by_value_then_column_and_measure_in_float64():
    scores = np.array([[3, 1, 2, 1, np.inf], [np.nan, 0, 0, 5, 0]], dtype=np.float32)
    columns, values = smallest_per_row(scores, 3)
    np.testing.assert_array_equal(columns, [[1, 3, 2], [1, 2, 4]])
    np.testing.assert_array_equal(values, [[1, 1, 2], [0, 0, 0]])
    columns, _ = smallest_per_row(scores[:, :2], 3)          # short rows pad with -1
    np.testing.assert_array_equal(columns, [[1, 0, -1], [1, -1, -1]])
    x = clustered_points(50, 7, seed=0)
    idx = np.random.default_rng(0).integers(-1, 50, size=(50, 4))
    got = pair_distances(x, np.arange(50), idx, np.float64)
    want = np.linalg.norm(x[np.maximum(idx, 0)].astype(np.float64) - x[:, None].astype(np.float64), axis=2)
    np.testing.assert_allclose(got[idx >= 0], want[idx >= 0], rtol=1e-12)
    assert np.isinf(got[idx < 0]).all()


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
    (KnnConfig(backend="annoy"),
     r"unknown KNN backend 'annoy'; valid choices: auto, exact, blocked-ivf, faiss, pynndescent"),
    (KnnConfig(metric="manhattan"), r"unknown KNN metric 'manhattan'; valid choices: euclidean, cosine"),
    (KnnConfig(backend="faiss", faiss_index="pq"), r"unknown faiss index 'pq'; valid choices: flat, hnsw, ivf"),
    (KnnConfig(backend="faiss", ivf_nprobe=0), r"ivf_nprobe must be a positive integer or 'auto', got 0"),
    (KnnConfig(pca_dim=0), r"pca_dim must be a positive integer or None, got 0"),
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


def test_gpu_requests_without_a_gpu_are_clear_errors():
    import faiss
    import torch

    x = np.random.default_rng(0).normal(size=(50, 3))
    if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        with pytest.raises(ConfigError, match="use_gpu='yes' but faiss sees no GPU"):
            build_knn_graph(x, KnnConfig(k=3, backend="faiss", use_gpu="yes"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="use_gpu='yes' but torch sees no CUDA device"):
            build_knn_graph(x, KnnConfig(k=3, backend="blocked-ivf", use_gpu="yes"))
