"""Blocked IVF search: k-means cells, and whole cells compared with each other in matrix products.

The points are split into `nlist` k-means cells (an IVF coarse quantiser) and each point probes its
`nprobe` nearest centroids. Two cells are compared, exactly, when a member of one probes the other
(pipeline.knn.blocked_search): a superset of what each query would probe alone, computed as dense
matrix products, each pair of cells once for both sides. `nprobe='auto'` takes the smallest ladder
step whose recall@K on a seeded query sample, against exact search, reaches `target_recall`: a true
neighbour is found exactly when its cell and the query's cell are a compared pair, so the probe needs
no search at all, only the exact neighbours of the sample.

Deterministic: the k-means sample and initial centroids come from the seed, centroid sums are
accumulated in float64 in a fixed order, and no result depends on the thread count.
"""
from __future__ import annotations

import logging

import numpy as np

from pipeline.knn.backends import KnnBackend, register_backend, run_parallel, torch_device
from pipeline.knn.blocked_search import cell_layout, cell_pairs, cell_search
from pipeline.knn.exact import exact_knn
from pipeline.knn.kernels import smallest_per_row

log = logging.getLogger(__name__)

NPROBE_LADDER: tuple[int, ...] = (1, 2, 3, 4)    # extended by EXTRA_LADDER when it falls short
EXTRA_LADDER: tuple[int, ...] = (6, 8, 12, 16, 24, 32, 48, 64)
CELLS_PER_SQRT_N = 2.0      # blocked-ivf default nlist = 2 sqrt(N): bench/results/knn.json
_CHUNK = 16_384             # rows per block when assigning points to cells


def ivf_nlist(n: int, nlist: int | None, per_sqrt_n: float = 4.0) -> int:
    """Cells for N points: `nlist`, or round(per_sqrt_n * sqrt(N)); at most N // 39 (faiss's floor per cell)."""
    wanted = nlist or int(round(per_sqrt_n * np.sqrt(n)))
    return int(np.clip(wanted, 1, max(1, n // 39)))


@register_backend("blocked-ivf")
class BlockedIvfBackend(KnnBackend):
    """k-means cells; two cells compared exactly (matrix products) when a member of one probes the other."""

    config_fields = ("ivf_nlist", "ivf_nprobe", "target_recall", "tune_queries", "ivf_kmeans_iters",
                     "ivf_train_per_list", "use_gpu")
    exact_distances = True

    def search(self, x: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        device = torch_device(config.use_gpu)
        n = x.shape[0]
        nlist = ivf_nlist(n, config.ivf_nlist, CELLS_PER_SQRT_N)
        threads = config.threads
        centroids = kmeans(x, nlist, config.ivf_kmeans_iters, config.ivf_train_per_list, config.seed,
                           device, threads)                                              # [C, D]
        if config.ivf_nprobe == "auto":
            history: list = []
            sample = tune_sample(x, config.k, config.tune_queries, config.seed + 1, threads, device)
            for ladder in (NPROBE_LADDER, EXTRA_LADDER):
                ladder = sorted({p for p in ladder if p < nlist} | {min(nlist, ladder[-1])})
                probes = nearest_cells(x, centroids, ladder[-1], device, threads)        # [N, P]
                nprobe, steps = tune_nprobe(probes, *sample, ladder, config.target_recall)
                history += steps
                if steps[-1][1] >= config.target_recall or ladder[-1] >= nlist:
                    break
        else:
            nprobe, history = min(int(config.ivf_nprobe), nlist), []
            probes = nearest_cells(x, centroids, nprobe, device, threads)
        distances, indices = cell_search(x, probes[:, :nprobe], nlist, width, device, threads)
        sizes = np.bincount(probes[:, 0], minlength=nlist)
        self.params = {"nlist": nlist, "nprobe": nprobe, "nprobe_tuning": history, "device": device,
                       "kmeans_iters": config.ivf_kmeans_iters, "train_per_list": config.ivf_train_per_list,
                       "largest_cell": int(sizes.max()), "empty_cells": int((sizes == 0).sum())}
        return distances, indices


def kmeans(x: np.ndarray, nlist: int, iters: int, per_list: int, seed: int, device: str = "cpu",
           threads: int | None = None) -> np.ndarray:
    """Lloyd's k-means on a seeded sample of at most nlist * per_list rows -> centroids [C, D] float32.

    Initial centroids are seeded distinct sample rows; an empty cell keeps its previous centroid.
    """
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    sample = np.sort(rng.choice(n, size=min(n, nlist * per_list), replace=False))
    train = x[sample]                                                                # [T, D]
    centroids = train[np.sort(rng.choice(len(train), size=nlist, replace=False))].copy()  # [C, D]
    train64 = train.astype(np.float64)
    for _ in range(iters):
        assign = nearest_cells(train, centroids, 1, device, threads)[:, 0]                    # [T]
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=nlist)                                # [C]
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        sums = np.add.reduceat(train64[order], starts, axis=0)                       # [C', D] float64
        centroids[filled] = (sums / counts[filled, None]).astype(np.float32)
    return centroids


def nearest_cells(x: np.ndarray, centroids: np.ndarray, p: int, device: str = "cpu",
                  threads: int | None = None) -> np.ndarray:
    """The `p` nearest centroids of every row, nearest first -> [N, p] int64 (ties: lower cell)."""
    import torch

    if device != "cpu":
        return _nearest_cells_torch(x, centroids, p, device)
    cent = torch.from_numpy(np.ascontiguousarray(centroids))                          # [C, D]
    csq = (cent * cent).sum(dim=1)                                                   # [C]
    out = np.empty((x.shape[0], p), dtype=np.int64)

    def run(start: int) -> None:
        block = torch.from_numpy(x[start:start + _CHUNK])                             # [B, D]
        scores = torch.addmm(csq[None, :], block, cent.T, alpha=-2.0)                # [B, C]
        if p == 1:
            out[start:start + len(block), 0] = scores.argmin(dim=1).numpy()
        else:
            out[start:start + len(block)] = smallest_per_row(scores.numpy(), p)[0]

    run_parallel([lambda s=s: run(s) for s in range(0, x.shape[0], _CHUNK)], threads)
    return out


def _nearest_cells_torch(x: np.ndarray, centroids: np.ndarray, p: int, device: str) -> np.ndarray:
    import torch

    cent = torch.from_numpy(np.ascontiguousarray(centroids)).to(device)
    csq = (cent * cent).sum(dim=1)
    out = np.empty((x.shape[0], p), dtype=np.int64)
    for start in range(0, x.shape[0], 16 * _CHUNK):
        block = torch.from_numpy(x[start:start + 16 * _CHUNK]).to(device)
        scores = torch.addmm(csq[None, :], block, cent.T, alpha=-2.0)                # [B, C]
        values, index = torch.topk(scores, p, dim=1, largest=False, sorted=True)
        index, by_index = index.sort(dim=1)                                          # ties: lower cell
        order = values.gather(1, by_index).argsort(dim=1, stable=True)
        out[start:start + len(block)] = index.gather(1, order).cpu().numpy()
    return out


def tune_sample(x: np.ndarray, k: int, n_queries: int, seed: int, threads: int | None = None,
                device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """A seeded query sample and its exact K nearest rows -> (rows [Q], neighbours [Q, K])."""
    from pipeline.knn.recall import recall_sample

    rows = recall_sample(x.shape[0], n_queries, seed)                                # [Q]
    return rows, exact_knn(x, k, queries=rows, device=device, threads=threads)      # [Q, K]


def tune_nprobe(probes: np.ndarray, rows: np.ndarray, exact: np.ndarray, ladder: list[int],
                target: float) -> tuple[int, list]:
    """Smallest ladder nprobe whose recall@K on the query sample `rows` reaches `target`.

    The search compares two cells' points exactly when the pair is in cell_pairs, so a sampled query
    finds an exact neighbour iff (its cell, the neighbour's cell) is a searched pair: the sample's
    recall at each nprobe follows from the pairs alone. Returns (nprobe, [[nprobe, sample recall], ...]).
    """
    home = probes[:, 0]
    nlist = int(home.max()) + 1
    layout = cell_layout(home, nlist)
    query_cells, neighbour_cells = home[rows][:, None], home[exact]                  # [Q, 1], [Q, K]
    history = []
    for nprobe in ladder:
        pairs = cell_pairs(probes[:, :nprobe], layout)                                # [C, C] bool
        recall = float(pairs[query_cells, neighbour_cells].mean())
        history.append([nprobe, round(recall, 5)])
        if recall >= target:
            break
    log.info("blocked IVF nprobe tuning (nprobe, sample recall): %s", history)
    return history[-1][0], history
