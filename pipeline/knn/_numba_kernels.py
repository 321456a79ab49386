"""numba kernels behind pipeline.knn.kernels (imported only after numba's cache folder is set)."""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def smallest_per_row(scores, w, columns, values):  # pragma: no cover - compiled
    """Insertion into a sorted buffer of w per row: one comparison for most entries."""
    m, width = scores.shape
    for i in range(m):
        vals = values[i]
        cols = columns[i]
        vals[:] = np.inf
        cols[:] = -1
        worst = np.inf
        for j in range(width):
            v = scores[i, j]
            if v < worst:                       # strict: an equal later column never displaces
                k = w - 1
                while k > 0 and vals[k - 1] > v:
                    vals[k] = vals[k - 1]
                    cols[k] = cols[k - 1]
                    k -= 1
                vals[k] = v
                cols[k] = j
                worst = vals[w - 1]


@numba.njit(nogil=True, cache=True)
def pair_distances(x, rows, indices, out):  # pragma: no cover - compiled
    """out[i, j] = |x[rows[i]] - x[indices[i, j]]| with float64 sums; inf where indices[i, j] < 0."""
    n, w = indices.shape
    dim = x.shape[1]
    for i in range(n):
        origin = x[rows[i]]
        for j in range(w):
            other = indices[i, j]
            if other < 0:
                out[i, j] = np.inf
                continue
            total = 0.0
            for d in range(dim):
                diff = np.float64(x[other, d]) - np.float64(origin[d])
                total += diff * diff
            out[i, j] = np.sqrt(total)
