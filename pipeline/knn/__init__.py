"""K-nearest-neighbour graphs over an [N, D] float32 array, with a measured recall.

Backends, one registered class each (`pipeline.knn.backends.BACKENDS`, chosen by KnnConfig.backend):
  exact        blocked brute force in torch (float32 products, float64 re-ranking), on CUDA when torch
               sees a GPU: the reference every graph's recall is measured against
  blocked-ivf  k-means cells; each cell's queries searched exactly, in one matrix product, against the
               union of the cells they probe; nprobe tuned to a target recall on a seeded sample
  faiss        IVF-Flat (nprobe tuned the same way) or HNSW on CPU; with CUDA and faiss-gpu, on the GPU
  pynndescent  NN-descent on CPU (numba; compiled code cached under $FER_CACHE/numba where numba can)
  auto         (default) exact up to 20K points, else blocked-ivf (pca_dim: optional PCA pre-step)

See pipeline.knn.core for the result contract every backend satisfies.
"""
from __future__ import annotations

import time

import numpy as np

from pipeline.knn.backends import BACKENDS, KnnBackend, register_backend
from pipeline.knn.config import METRICS, KnnConfig, backend_names, backend_params, check_config, resolve
from pipeline.knn.exact import exact_knn, row_distances
from pipeline.knn import blocked as _blocked  # noqa: F401  (registers blocked-ivf)
from pipeline.knn import ann as _ann  # noqa: F401  (registers faiss and pynndescent)
from pipeline.knn.core import KnnGraph, best_k, build_knn_graph, pca_project, prepare_features, sort_rows
from pipeline.knn.recall import clustered_points, recall_at_k, recall_sample

STAGE_VERSION = "2.0.0"

__all__ = [
    "BACKENDS", "KnnBackend", "KnnConfig", "KnnGraph", "METRICS", "STAGE_VERSION", "backend_names",
    "backend_params", "best_k", "build_knn_graph", "check_config", "clustered_points", "exact_knn",
    "pca_project", "prepare_features", "recall_at_k", "recall_sample", "register_backend", "resolve",
    "row_distances", "sort_rows", "warm_up",
]


def warm_up(config: KnnConfig = KnnConfig(backend="pynndescent")) -> float:
    """Compile the backend's JIT code on a tiny seeded array -> seconds spent (pynndescent only).

    pynndescent's nn_descent cannot be cached by numba, so each process pays ~15 s on its first
    graph; a flow can pay it early (e.g. in a thread while other stages read files).
    """
    start = time.perf_counter()
    if config.backend == "pynndescent":
        tiny = np.random.default_rng(0).normal(size=(max(64, 4 * (config.k + 1)), 3)).astype(np.float32)
        build_knn_graph(tiny, config)
    return time.perf_counter() - start
