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


@numba.njit(nogil=True, cache=True)
def sort_pairs(indices, distances):  # pragma: no cover - compiled
    """Sort each row in place by (distance, index); index -1 (a missing candidate) goes last."""
    n, w = indices.shape
    for i in range(n):
        for j in range(1, w):
            idx = indices[i, j]
            dist = distances[i, j]
            k = j
            while k > 0 and _after(indices[i, k - 1], distances[i, k - 1], idx, dist):
                indices[i, k] = indices[i, k - 1]
                distances[i, k] = distances[i, k - 1]
                k -= 1
            indices[i, k] = idx
            distances[i, k] = dist


@numba.njit(inline="always")
def _after(idx_a, dist_a, idx_b, dist_b):  # pragma: no cover - compiled
    """True when (dist_a, idx_a) sorts after (dist_b, idx_b); missing (-1) sorts after everything."""
    if idx_a < 0:
        return idx_b >= 0
    if idx_b < 0:
        return False
    return dist_a > dist_b or (dist_a == dist_b and idx_a > idx_b)


@numba.njit(nogil=True, cache=True)
def merge_block(scores, row_sq, first_a, first_b, values, indices):  # pragma: no cover - compiled
    """Offer a block of squared distances (scores [ma, mb] + row_sq [ma]; rows first_a.., columns
    first_b..) to both sides' running best lists.

    values/indices [N, w] hold each row's w best (value, index) so far, sorted; a candidate enters when
    it sorts before the current last, so the final lists do not depend on the order blocks arrive in.
    The diagonal of a block of one cell with itself (first_a == first_b) is skipped: a row is never
    its own candidate, and each pair inside the cell is seen from both rows already.
    """
    ma, mb = scores.shape
    w = values.shape[1]
    same = first_a == first_b
    worst_b = np.empty(mb, dtype=values.dtype)          # the columns' current last values, in order
    for j in range(mb):
        worst_b[j] = values[first_b + j, w - 1]
    for i in range(ma):
        row_a = first_a + i
        base = row_sq[i]
        worst_a = values[row_a, w - 1]
        for j in range(mb):
            v = scores[i, j] + base
            if v <= worst_a and not (same and i == j):
                if _offer(values, indices, row_a, v, first_b + j):
                    worst_a = values[row_a, w - 1]
            if not same and v <= worst_b[j]:
                if _offer(values, indices, first_b + j, v, row_a):
                    worst_b[j] = values[first_b + j, w - 1]


@numba.njit(nogil=True, inline="always")
def _offer(values, indices, row, v, candidate):  # pragma: no cover - compiled
    """Insert (v, candidate) into row's sorted list when it sorts before the last -> whether it did."""
    w = values.shape[1]
    last_v = values[row, w - 1]
    if v != v or v > last_v:
        return False
    if v == last_v and indices[row, w - 1] >= 0 and candidate >= indices[row, w - 1]:
        return False
    k = w - 1
    while k > 0 and (values[row, k - 1] > v or (values[row, k - 1] == v and indices[row, k - 1] > candidate)):
        values[row, k] = values[row, k - 1]
        indices[row, k] = indices[row, k - 1]
        k -= 1
    values[row, k] = v
    indices[row, k] = candidate
    return True
