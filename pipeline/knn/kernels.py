"""Small compiled kernels for the searches: per-row selection of the smallest values, pair distances.

Compiled with numba (installed with pynndescent) and cached on disk under $FER_CACHE/numba, so only
the first process on a machine pays the compile (a few seconds); without numba, torch/numpy stand in.
Every kernel works row by row and releases the GIL, so callers split rows across threads and the
result never depends on the thread count.
"""
from __future__ import annotations

import functools
import logging
import os

import numpy as np

log = logging.getLogger(__name__)


@functools.cache
def _compiled():
    """The numba kernels, compiled (or loaded from the disk cache) on first use; None without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba comes with pynndescent
        log.warning("numba is not installed: KNN selection falls back to torch.topk (slower)")
        return None
    if not os.environ.get("NUMBA_CACHE_DIR"):
        from pipeline.contract.lock import cache_root

        numba.config.CACHE_DIR = str(cache_root() / "numba")
    from pipeline.knn import _numba_kernels

    return _numba_kernels


def smallest_per_row(scores: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The w smallest entries of each row of scores [m, M] float32 -> (columns [m, w] int64, values [m, w]).

    Ordered by (value, column), so equal values keep the lower column; rows with fewer than w finite
    entries are padded with (-1, inf). NaN is never selected.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    columns = np.empty((scores.shape[0], w), dtype=np.int64)
    values = np.empty((scores.shape[0], w), dtype=np.float32)
    kernels = _compiled()
    if kernels is not None:
        kernels.smallest_per_row(scores, w, columns, values)
        return columns, values
    import torch  # pragma: no cover - fallback without numba

    take = min(w, scores.shape[1])
    found = torch.topk(torch.from_numpy(scores), take, dim=1, largest=False, sorted=True)
    columns[:], values[:] = -1, np.inf
    columns[:, :take], values[:, :take] = found.indices.numpy(), found.values.numpy()
    columns[~np.isfinite(values)] = -1
    return columns, values


def pair_distances(x: np.ndarray, rows: np.ndarray, indices: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Euclidean distance from x[rows[i]] to x[indices[i, j]] (float64 sums) -> [n, w] `dtype`; -1 -> inf."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    out = np.empty(indices.shape, dtype=np.float64)
    kernels = _compiled()
    if kernels is not None:
        kernels.pair_distances(x, rows, indices, out)
    else:  # pragma: no cover - fallback without numba
        diff = x[np.maximum(indices, 0)].astype(np.float64) - x[rows].astype(np.float64)[:, None, :]
        out[:] = np.sqrt(np.einsum("nkd,nkd->nk", diff, diff))
        out[indices < 0] = np.inf
    return out.astype(dtype, copy=False)


def sort_pairs(indices: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (distance, index), index -1 last -> (indices [n, w] int64, distances [n, w]) copies."""
    indices = np.array(indices, dtype=np.int64, order="C")
    distances = np.array(distances, order="C")
    kernels = _compiled()
    if kernels is not None:
        kernels.sort_pairs(indices, distances)
        return indices, distances
    missing = indices < 0  # pragma: no cover - fallback without numba
    key_i = np.where(missing, np.iinfo(np.int64).max, indices)
    order = np.argsort(key_i, axis=1, kind="stable")
    key_d = np.take_along_axis(np.where(missing, np.inf, distances), order, 1)
    order = np.take_along_axis(order, np.argsort(key_d, axis=1, kind="stable"), 1)
    return np.take_along_axis(indices, order, 1), np.take_along_axis(distances, order, 1)


def merge_block(scores: np.ndarray, row_sq: np.ndarray, first_a: int, first_b: int, values: np.ndarray,
                indices: np.ndarray) -> None:
    """Offer the squared distances scores [ma, mb] + row_sq[:, None] of rows first_a.. and columns
    first_b.. to both sides' sorted running lists values/indices [N, w] (in place; needs numba)."""
    kernels = _compiled()
    if kernels is None:  # pragma: no cover - numba comes with pynndescent
        raise RuntimeError("the symmetric blocked search needs numba")
    kernels.merge_block(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(row_sq),
                        first_a, first_b, values, indices)
