"""Blocked IVF search: k-means cells, and every cell's queries searched exactly in one matrix product.

The points are split into `nlist` k-means cells (an IVF coarse quantiser). Each point probes its
`nprobe` nearest centroids; the queries of one cell are then compared, by a single torch matrix
product, with every point of the union of the cells its members probe, and keep their nearest
`width`. Searching a cell's queries together turns faiss's per-query list scans into dense matrix
products (several times faster per distance on a CPU), and the union is a superset of what each
query would probe alone. `nprobe='auto'` takes the smallest ladder step whose recall@K on a seeded
query sample, against exact search, reaches `target_recall`: with exact distances inside the
candidates, a true neighbour is found exactly when its cell is in the union, so the probe needs no
search at all, only the exact neighbours of the sample.

Deterministic: the k-means sample and initial centroids come from the seed, centroid sums are
accumulated in float64 in a fixed order, and no result depends on the thread count.
"""
from __future__ import annotations

import logging

import numpy as np

from pipeline.knn.backends import KnnBackend, register_backend, run_parallel, torch_device
from pipeline.knn.exact import exact_knn
from pipeline.knn.kernels import smallest_per_row

log = logging.getLogger(__name__)

NPROBE_LADDER: tuple[int, ...] = (1, 2, 3, 4, 6, 8)    # extended by EXTRA_LADDER when it falls short
EXTRA_LADDER: tuple[int, ...] = (12, 16, 24, 32, 48, 64)
CELLS_PER_SQRT_N = 2.0      # blocked-ivf default nlist = 2 sqrt(N): bench/results/knn.json
_CHUNK = 16_384             # rows per block when assigning points to cells


def ivf_nlist(n: int, nlist: int | None, per_sqrt_n: float = 4.0) -> int:
    """Cells for N points: `nlist`, or round(per_sqrt_n * sqrt(N)); at most N // 39 (faiss's floor per cell)."""
    wanted = nlist or int(round(per_sqrt_n * np.sqrt(n)))
    return int(np.clip(wanted, 1, max(1, n // 39)))


@register_backend("blocked-ivf")
class BlockedIvfBackend(KnnBackend):
    """k-means cells + exact search of each cell's queries against the union of probed cells (torch)."""

    config_fields = ("ivf_nlist", "ivf_nprobe", "target_recall", "tune_queries", "ivf_kmeans_iters",
                     "ivf_train_per_list", "use_gpu")

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
            sample = tune_sample(x, config.k, config.tune_queries, config.seed + 1, threads)
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


def cell_layout(home: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by home cell -> (order [N], starts [C], counts [C]): cell c is order[starts[c]:+counts[c]]."""
    order = np.argsort(home, kind="stable")
    counts = np.bincount(home, minlength=nlist)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def probed_union(probes: np.ndarray, members: np.ndarray, home_cell: int) -> np.ndarray:
    """Cells probed by any member of one cell, the home cell first, then ascending."""
    cells = np.unique(probes[members])
    return np.concatenate([[home_cell], cells[cells != home_cell]])


def cell_search(x: np.ndarray, probes: np.ndarray, nlist: int, width: int, device: str = "cpu",
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's queries against the union of their probed cells -> (D [N, width], I [N, width]).

    D holds squared euclidean distances (float32, from the products), I row positions (-1 when a
    union holds fewer than width other points). The row itself is never listed.
    """
    import torch

    n = x.shape[0]
    order, starts, counts = cell_layout(probes[:, 0], nlist)
    centred = x - x.astype(np.float64).mean(axis=0).astype(np.float32)               # [N, D]
    by_cell = torch.from_numpy(np.ascontiguousarray(centred[order])).to(device)      # [N, D] grouped
    sq = (by_cell * by_cell).sum(dim=1)                                              # [N]
    out_i = np.full((n, width), -1, dtype=np.int64)
    out_d = np.full((n, width), np.inf, dtype=np.float32)

    def run(cell: int) -> None:
        m = int(counts[cell])
        members = order[starts[cell]:starts[cell] + m]
        positions = _positions(probed_union(probes, members, cell), starts, counts)  # [M] grouped rows
        pos_t = torch.from_numpy(positions).to(device)
        queries = by_cell[starts[cell]:starts[cell] + m]                             # [m, D]
        scores = torch.addmm(sq[pos_t][None, :], queries, by_cell[pos_t].T, alpha=-2.0)  # [m, M]
        diagonal = torch.arange(m, device=device)
        scores[diagonal, diagonal] = float("inf")                                    # self
        columns, values = _smallest(scores, width)                                   # [m, width]
        found = columns >= 0
        out_i[members] = np.where(found, order[positions[np.maximum(columns, 0)]], -1)
        out_d[members] = values + sq[starts[cell]:starts[cell] + m, None].cpu().numpy()

    if device == "cpu":
        run_parallel([lambda c=c: run(c) for c in np.flatnonzero(counts)], threads)
    else:
        for cell in np.flatnonzero(counts):
            run(cell)
    return out_d, out_i


def _smallest(scores, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row `width` smallest of a torch score block -> numpy (columns, values), (value, column) order."""
    import torch

    if scores.device.type == "cpu":
        return smallest_per_row(scores.numpy(), width)
    take = min(width, scores.shape[1])
    values, columns = torch.topk(scores, take, dim=1, largest=False, sorted=True)
    columns, by_column = columns.sort(dim=1)
    order = values.gather(1, by_column).argsort(dim=1, stable=True)
    columns, values = columns.gather(1, order), values.gather(1, order)
    out_c = np.full((scores.shape[0], width), -1, dtype=np.int64)
    out_v = np.full((scores.shape[0], width), np.inf, dtype=np.float32)
    out_c[:, :take], out_v[:, :take] = columns.cpu().numpy(), values.cpu().numpy()
    out_c[~np.isfinite(out_v)] = -1
    return out_c, out_v


def _positions(cells: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Grouped-row positions of every point in `cells`, cell by cell -> [sum(counts[cells])] int64."""
    sizes = counts[cells]
    offsets = np.repeat(starts[cells] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return np.arange(int(sizes.sum()), dtype=np.int64) + offsets


def tune_sample(x: np.ndarray, k: int, n_queries: int, seed: int,
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A seeded query sample and its exact K nearest rows -> (rows [Q], neighbours [Q, K])."""
    from pipeline.knn.recall import recall_sample

    rows = recall_sample(x.shape[0], n_queries, seed)                                # [Q]
    return rows, exact_knn(x, k, queries=rows, device="cpu", threads=threads)       # [Q, K]


def tune_nprobe(probes: np.ndarray, rows: np.ndarray, exact: np.ndarray, ladder: list[int],
                target: float) -> tuple[int, list]:
    """Smallest ladder nprobe whose recall@K on the query sample `rows` reaches `target`.

    A sampled query finds an exact neighbour iff the neighbour's home cell is in the union of cells
    probed by the query's cell, so for each (query, neighbour) pair the smallest nprobe that finds it
    is the first probe rank at which any member of the query's cell lists the neighbour's cell.
    Returns (nprobe, [[nprobe, sample recall], ...]).
    """
    home = probes[:, 0]
    nlist = int(home.max()) + 1
    order, starts, counts = cell_layout(home, nlist)
    depth = probes.shape[1]
    need = np.empty(exact.shape, dtype=np.int64)                                     # [Q, K]
    for cell in np.unique(home[rows]):
        members = order[starts[cell]:starts[cell] + counts[cell]]
        rank = np.full(nlist, depth + 1, dtype=np.int64)                            # first probe rank + 1
        for column in range(depth - 1, -1, -1):
            rank[probes[members, column]] = column + 1
        picked = np.flatnonzero(home[rows] == cell)
        need[picked] = rank[home[exact[picked]]]
    history = []
    for nprobe in ladder:
        recall = float((need <= nprobe).mean())
        history.append([nprobe, round(recall, 5)])
        if recall >= target:
            break
    log.info("blocked IVF nprobe tuning (nprobe, sample recall): %s", history)
    return history[-1][0], history
