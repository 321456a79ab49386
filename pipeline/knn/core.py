"""build_knn_graph: any registered backend's candidates -> the graph contract.

Whatever the backend, the result has the same contract: `indices` [N, K] int64 row positions and
`distances` [N, K] float32 recomputed from the features, a row is never its own neighbour, and each row
is sorted by (distance, index) so ties are broken stably by the lower index. For the cosine metric the
features are L2-normalised, searched with the euclidean metric (same ranking), and `distances` hold
cosine distances 1 - cos(x_i, x_j). An optional PCA pre-step searches approximate backends in fewer
dimensions and re-ranks their candidates by exact distance in the full space.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.knn.backends import BACKENDS, torch_threads
from pipeline.knn.config import KnnConfig, check_config, resolve
from pipeline.knn.exact import exact_knn, row_distances
from pipeline.knn.features import prepare_features
from pipeline.knn.kernels import sort_pairs
from pipeline.knn.recall import recall_sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnnGraph:
    """A built graph: row i's neighbours are `indices[i]` (row positions, never i itself)."""

    indices: np.ndarray      # [N, K] int64
    distances: np.ndarray    # [N, K] float32 (euclidean, or cosine distance)
    backend: str             # the backend that ran (backend='auto' resolved)
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    config: KnnConfig | None = None   # the resolved configuration


def build_knn_graph(features: np.ndarray, config: KnnConfig = KnnConfig(),
                    sample_ids: Sequence[int] | np.ndarray | None = None) -> KnnGraph:
    """Build the K-NN graph of `features` [N, D] with the configured backend (self excluded)."""
    check_config(config, len(features))
    x = prepare_features(features, config.metric, sample_ids)  # [N, D] float32
    import torch  # noqa: F401  (loaded before timing: a one-off import is not build time)

    config = resolve(config, *x.shape)
    backend = BACKENDS.get(config.backend)(config)
    start = time.perf_counter()
    if backend.margin == 0:
        _, indices = backend.search(x, config.k)
        distances, extra = row_distances(x, indices), {}
    else:
        searched, width, extra = x, min(config.k + 1 + backend.margin, x.shape[0]), {}
        if config.pca_dim is not None and config.pca_dim < x.shape[1]:
            searched, extra = pca_project(x, config.pca_dim, config.pca_sample, config.seed, config.threads)
            width = min(max(config.pca_width, width), x.shape[0])
        found, candidates = backend.search(searched, width)               # [N, width]
        measured = found if backend.exact_distances and searched is x else None
        indices, distances = best_k(x, candidates, config.k, config.threads, measured)
    if config.metric == "cosine":
        distances = (0.5 * distances.astype(np.float64) ** 2).astype(np.float32)
    seconds = time.perf_counter() - start
    log.info("KNN graph N=%d D=%d K=%d with %s in %.1f s", x.shape[0], x.shape[1], config.k,
             config.backend, seconds)
    return KnnGraph(indices=indices, distances=distances, backend=config.backend,
                    params={**backend.params, **extra}, seconds=seconds, config=config)


def pca_project(x: np.ndarray, dim: int, sample: int, seed: int,
                threads: int | None = None) -> tuple[np.ndarray, dict]:
    """Project [N, D] onto the `dim` leading principal axes of a seeded sample -> ([N, dim] float32, info).

    The covariance is accumulated in float64; each axis's sign is fixed (largest entry positive) so
    the projection is the same on every machine.
    """
    import torch

    rows = recall_sample(x.shape[0], sample, seed + 2)
    fit = x[rows].astype(np.float64)                                             # [S, D]
    mean = fit.mean(axis=0)                                                      # [D]
    fit -= mean
    values, vectors = np.linalg.eigh(fit.T @ fit / len(rows))                    # ascending
    axes = vectors[:, ::-1][:, :dim]                                             # [D, d]
    axes = axes * np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(dim)])
    with torch_threads(threads):
        centred = torch.from_numpy(x) - torch.from_numpy(mean.astype(np.float32))   # [N, D]
        projected = (centred @ torch.from_numpy(np.ascontiguousarray(axes, dtype=np.float32))).numpy()
    explained = float(values[::-1][:dim].sum() / max(values.sum(), 1e-300))
    return np.ascontiguousarray(projected), {"pca_dim": dim, "pca_explained_variance": round(explained, 5)}


def sort_rows(indices: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index): a stable tie-break on the lower index; index -1 goes last."""
    return sort_pairs(indices, distances)


def best_k(x: np.ndarray, candidates: np.ndarray, k: int, threads: int | None = None,
           distances: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[N, M] backend candidates (may hold the row itself, -1 or repeats) -> the K best by (distance, index).

    `distances` [N, M], when the backend measured them as pair_distances does (float64 sums over the
    features), are used as they are; else they are measured here. Rows left with fewer than K
    distinct neighbours, and rows whose K-th distance ties the last candidate (equal points may lie
    beyond the candidates), are searched exactly.
    """
    n, width = candidates.shape
    candidates = np.where(candidates == np.arange(n)[:, None], -1, candidates.astype(np.int64))  # [N, M]
    if distances is None:
        distances = row_distances(x, candidates, threads=threads)                           # [N, M], -1: inf
    else:
        distances = np.where(candidates < 0, np.inf, distances).astype(np.float32)
    candidates, distances = sort_pairs(candidates, distances)
    repeated = (candidates[:, 1:] == candidates[:, :-1]) & (candidates[:, 1:] >= 0)
    bad = (candidates[:, :k] < 0).any(axis=1) | repeated.any(axis=1)
    if width > k and width < n - 1:
        bad |= distances[:, k - 1] >= distances[:, -1]
    indices, distances = candidates[:, :k].copy(), distances[:, :k].copy()
    if bad.any():
        rows = np.flatnonzero(bad)
        log.info("%d rows lacked K distinct neighbours or tied the last candidate; searched exactly", len(rows))
        indices[rows] = exact_knn(x, k, queries=rows, device="cpu", threads=threads)
        distances[rows] = row_distances(x, indices[rows], rows, threads=threads)
    return indices, distances
