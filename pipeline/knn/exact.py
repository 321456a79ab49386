"""Exact K-nearest-neighbour search in blocks (torch): the reference every graph's recall is measured against.

Blocks of float32 scores |x|^2 - 2 q.x (squared distance less |q|^2, on centred data) pick K + margin
candidates with torch.topk; their distances are recomputed in float64 from differences and sorted
by (distance, index). Rows whose K-th distance ties the last candidate are settled over all points.
"""
from __future__ import annotations

import numpy as np

from pipeline.knn.backends import KnnBackend, register_backend, torch_device, torch_threads

REFINE_MARGIN = 8           # extra float32 candidates re-ranked in float64
BLOCK_ELEMENTS = 1 << 25    # distance-matrix elements per block (128 MiB float32)


@register_backend("exact")
class ExactBackend(KnnBackend):
    """Blocked brute force (float32 products, float64 re-ranking), on CUDA when torch sees a GPU."""

    config_fields = ("use_gpu",)
    margin = 0

    def search(self, x: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        device = torch_device(self.config.use_gpu)
        with torch_threads(self.config.threads):
            indices = exact_knn(x, width, device=device)                       # [N, width]
        self.params = {"block_elements": BLOCK_ELEMENTS, "device": device}
        return row_distances(x, indices) ** 2, indices


def exact_knn(x: np.ndarray, k: int, queries: np.ndarray | None = None,
              exclude_self: bool = True, device: str = "auto") -> np.ndarray:
    """Exact K nearest rows of `x` [N, D] for each query row position ([Q], default all) -> [Q, K] int64.

    Self is excluded by position when `exclude_self`. `device` 'auto' runs on CUDA when torch sees a
    GPU, else on the CPU.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    n = x.shape[0]
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    take = min(k + REFINE_MARGIN, n - (1 if exclude_self else 0))
    data = torch.from_numpy(x).to(device)                                     # [N, D] float32
    centred = data - data.double().mean(dim=0).float()                        # [N, D]
    sq = (centred * centred).sum(dim=1)                                       # [N]
    block = max(1, min(len(rows), BLOCK_ELEMENTS // n))
    out = torch.empty((len(rows), k), dtype=torch.int64, device=device)
    all_rows = torch.from_numpy(rows).to(device)                              # [Q]
    buffer = torch.empty((block, n), dtype=torch.float32, device=device)      # reused: no page faults
    for start in range(0, len(rows), block):
        q_rows = all_rows[start:start + block]                                # [B]
        # |x|^2 - 2 q.x ranks a row like |q - x|^2 (|q|^2 is constant per row); no [B, N] temporaries.
        d2 = torch.addmm(sq[None, :], centred[q_rows], centred.T, alpha=-2.0,
                         out=buffer[:len(q_rows)])                            # [B, N]
        if exclude_self:
            d2[torch.arange(len(q_rows), device=device), q_rows] = float("inf")
        cand = torch.topk(d2, take, dim=1, largest=False).indices              # [B, take]
        out[start:start + block] = _rerank(data, q_rows, cand, k, exclude_self,
                                           complete=take >= n - (1 if exclude_self else 0))
    return out.cpu().numpy()


def _rerank(data, q_rows, cand, k: int, exclude_self: bool, complete: bool):
    """[B, M] candidates -> [B, k] by (float64 distance, index); ties reaching the margin: all points."""
    diff = data[cand].double() - data[q_rows].double()[:, None, :]            # [B, M, D]
    cand_dist = diff.pow(2).sum(dim=2)                                        # [B, M] float64
    cand, by_index = cand.sort(dim=1)
    cand_dist = cand_dist.gather(1, by_index)
    by_distance = cand_dist.argsort(dim=1, stable=True)
    cand, cand_dist = cand.gather(1, by_distance), cand_dist.gather(1, by_distance)
    best = cand[:, :k].clone()
    if not complete:
        # A tie at the K-th distance that reaches the last candidate may continue beyond the
        # candidates: settle those rows over all points.
        import torch

        for i in torch.nonzero(cand_dist[:, k - 1] >= cand_dist[:, -1]).flatten().tolist():
            best[i] = _exact_row(data, int(q_rows[i]), k, exclude_self)
    return best


def _exact_row(data, row: int, k: int, exclude_self: bool):
    """One row's K nearest by (float64 distance, index) over all points (torch, on data's device)."""
    import torch

    d2 = (data.double() - data[row].double()).pow(2).sum(dim=1)               # [N] float64
    if exclude_self:
        d2[row] = float("inf")
    return torch.sort(d2, stable=True).indices[:k]


def row_distances(x: np.ndarray, indices: np.ndarray, rows: np.ndarray | None = None,
                  dtype: type = np.float32, chunk: int = 8192) -> np.ndarray:
    """Euclidean distance from row `rows[i]` (default i) to each of `indices[i]` -> [N, K]."""
    n_rows, k = indices.shape
    rows = np.arange(n_rows) if rows is None else rows
    out = np.empty((n_rows, k), dtype=dtype)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        origin = x[rows[start:stop]].astype(dtype)[:, None, :]        # [C, 1, D]
        diff = x[indices[start:stop]].astype(dtype) - origin          # [C, K, D]
        out[start:stop] = np.sqrt(np.einsum("ckd,ckd->ck", diff, diff))
    return out
