"""Exact K-nearest-neighbour search in blocks: the reference every graph's recall is measured against.

Blocks of float32 scores |x|^2 - 2 q.x (squared distance less |q|^2, on centred data) pick K + margin
candidates; their distances are recomputed with float64 sums and sorted by (distance, index). Rows
whose K-th distance ties the last candidate are settled over all points. On the CPU the blocks run
on worker threads (torch products, compiled selection); on CUDA pipeline.knn.exact_torch runs them
(split-TF32 candidate products with a proven margin, chunked top-k, float64 re-ranking): the same
neighbours.
"""
from __future__ import annotations

import numpy as np

from pipeline.knn.backends import (KnnBackend, register_backend, run_parallel, torch_device, torch_threads,
                                   workers)
from pipeline.knn.kernels import pair_distances, smallest_per_row, sort_pairs

REFINE_MARGIN = 8           # extra float32 candidates re-ranked in float64
BLOCK_ELEMENTS = 1 << 23    # distance-matrix elements per block and thread on the CPU (32 MiB float32)


@register_backend("exact")
class ExactBackend(KnnBackend):
    """Blocked brute force (float32 products, float64 re-ranking), on CUDA when torch sees a GPU."""

    config_fields = ("use_gpu",)
    margin = 0

    def search(self, x: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        device = torch_device(self.config.use_gpu)
        indices = exact_knn(x, width, device=device, threads=self.config.threads)   # [N, width]
        if device == "cpu":
            self.params = {"block_elements": BLOCK_ELEMENTS, "device": device}
        else:
            from pipeline.knn.exact_torch import DEFAULT_PRECISION, GPU_MARGIN
            self.params = {"device": device, "candidates": f"{DEFAULT_PRECISION}, proven margin", "margin": GPU_MARGIN}
        return row_distances(x, indices) ** 2, indices


def exact_knn(x: np.ndarray, k: int, queries: np.ndarray | None = None, exclude_self: bool = True,
              device: str = "auto", threads: int | None = None) -> np.ndarray:
    """Exact K nearest rows of `x` [N, D] for each query row position ([Q], default all) -> [Q, K] int64.

    Self is excluded by position when `exclude_self`. `device` 'auto' runs on CUDA when torch sees a
    GPU, else on the CPU (with `threads` workers, default every core).
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = np.arange(x.shape[0]) if queries is None else np.asarray(queries, dtype=np.int64)
    if device != "cpu":
        from pipeline.knn.exact_torch import exact_knn_torch

        return exact_knn_torch(x, k, rows, exclude_self, device)
    n = x.shape[0]
    take = min(k + REFINE_MARGIN, n - (1 if exclude_self else 0))
    centred = x - x.astype(np.float64).mean(axis=0).astype(np.float32)               # [N, D]
    sq = np.einsum("nd,nd->n", centred, centred)                                      # [N]
    data, sq_t = torch.from_numpy(centred), torch.from_numpy(sq)
    out = np.empty((len(rows), k), dtype=np.int64)
    block = max(1, min(len(rows), BLOCK_ELEMENTS // n, -(-len(rows) // workers(threads))))

    def run(start: int) -> None:
        q_rows = rows[start:start + block]                                             # [B]
        scores = torch.addmm(sq_t[None, :], data[torch.from_numpy(q_rows)], data.T, alpha=-2.0).numpy()
        if exclude_self:
            scores[np.arange(len(q_rows)), q_rows] = np.inf                            # [B, N]
        cand, _ = smallest_per_row(scores, take)                                       # [B, take]
        out[start:start + len(q_rows)] = rerank(x, q_rows, cand, k, exclude_self,
                                                complete=take >= n - (1 if exclude_self else 0))

    run_parallel([lambda s=s: run(s) for s in range(0, len(rows), block)], threads)
    return out


def rerank(x: np.ndarray, q_rows: np.ndarray, cand: np.ndarray, k: int, exclude_self: bool,
           complete: bool) -> np.ndarray:
    """[B, M] candidates -> [B, k] by (float64 distance, index); ties reaching the margin: all points."""
    cand, dist = sort_pairs(cand, pair_distances(x, q_rows, cand, np.float64))       # [B, M]
    best = cand[:, :k].copy()
    if not complete:
        # A tie at the K-th distance that reaches the last candidate may continue beyond the
        # candidates: settle those rows over all points.
        for i in np.flatnonzero(dist[:, k - 1] >= dist[:, -1]):
            best[i] = exact_row(x, int(q_rows[i]), k, exclude_self)
    return best


def exact_row(x: np.ndarray, row: int, k: int, exclude_self: bool = True) -> np.ndarray:
    """One row's K nearest by (float64 distance, index) over all points -> [K] int64."""
    diff = x.astype(np.float64) - x[row].astype(np.float64)                           # [N, D]
    d2 = np.einsum("nd,nd->n", diff, diff)                                            # [N]
    if exclude_self:
        d2[row] = np.inf
    return np.argsort(d2, kind="stable")[:k]


def row_distances(x: np.ndarray, indices: np.ndarray, rows: np.ndarray | None = None,
                  dtype: type = np.float32, threads: int | None = None, chunk: int = 16_384) -> np.ndarray:
    """Euclidean distance from row `rows[i]` (default i) to each of `indices[i]` -> [N, K] (-1 -> inf)."""
    rows = np.arange(indices.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty(indices.shape, dtype=dtype)

    def run(start: int) -> None:
        out[start:start + chunk] = pair_distances(x, rows[start:start + chunk], indices[start:start + chunk],
                                                  dtype)

    run_parallel([lambda s=s: run(s) for s in range(0, indices.shape[0], chunk)], threads)
    return out


__all__ = ["ExactBackend", "exact_knn", "exact_row", "rerank", "row_distances", "torch_threads"]
