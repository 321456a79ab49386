"""Recall of a graph against exact search on a seeded sample, and seeded clustered test data."""
from __future__ import annotations

import numpy as np

from pipeline.knn.exact import exact_knn, row_distances
from pipeline.knn.features import prepare_features


def recall_sample(n: int, n_queries: int, seed: int) -> np.ndarray:
    """Seeded, sorted sample of query rows for recall measurement ([min(n_queries, N)])."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n_queries, n), replace=False))


def recall_at_k(features: np.ndarray, indices: np.ndarray, metric: str = "euclidean",
                n_queries: int = 2000, seed: int = 0) -> float:
    """Recall@K of a graph against exact search on a seeded sample of query rows.

    Tie-tolerant: a returned neighbour counts as found when its exact distance is no greater than the
    exact K-th neighbour's distance, so equally distant points are interchangeable.
    """
    x = prepare_features(features, metric)
    k = indices.shape[1]
    queries = recall_sample(len(x), n_queries, seed)
    exact = exact_knn(x, k, queries=queries)                                 # [Q, K]
    kth = row_distances(x, exact[:, -1:], queries, dtype=np.float64)[:, 0]   # [Q]
    got = row_distances(x, indices[queries], queries, dtype=np.float64)      # [Q, K]
    not_self = indices[queries] != queries[:, None]
    found = (got <= kth[:, None] * (1 + 1e-9) + 1e-12) & not_self
    return float(found.sum() / found.size)


def clustered_points(n: int, dim: int, clusters: int = 64, intrinsic_dim: int = 16,
                     noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """Seeded clustered data for tests and benchmarks -> [n, dim] float32.

    A Gaussian mixture: cluster sizes from a Dirichlet, centres N(0, 4^2 I), each cluster spread along
    its own random `intrinsic_dim`-dimensional subspace (unit variance per latent axis, scaled per
    cluster by 0.5..1.5) plus isotropic noise of std `noise`, like shapes and AU profiles that vary
    along a few modes. Not a model of any real dataset.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n, rng.dirichlet(np.full(clusters, 2.0)))
    latent = min(intrinsic_dim, dim)
    parts = []
    for size in sizes:
        centre = rng.normal(0.0, 4.0, size=dim)                                    # [D]
        basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T                   # [L, D]
        scale = rng.uniform(0.5, 1.5)
        z = rng.normal(size=(size, latent)) * scale                                # [S, L]
        parts.append(centre + z @ basis + rng.normal(0.0, noise, size=(size, dim)))  # [S, D]
    points = np.concatenate(parts).astype(np.float32)
    return points[rng.permutation(n)]
