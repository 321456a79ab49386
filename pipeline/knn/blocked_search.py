"""The search behind blocked-ivf: which cells meet, and the matrix products between them.

Cells a and b are compared when a member of either probes the other (`cell_pairs`). On the CPU each
such pair is one product of a's points with b's, offered to both sides' running lists of the
`width` best candidates (pipeline.knn.kernels.merge_block), so every distance is computed once; worker
threads take pairs in any order, and the lists keep the best by (value, index), so the result does not
depend on the order or the thread count. On CUDA each cell's points are compared with all its paired
cells in one product and torch.topk keeps the best. Either way the kept candidates get their distance
measured as pair_distances does (float64 sums over the features).
"""
from __future__ import annotations

import threading

import numpy as np

from pipeline.knn.backends import run_parallel
from pipeline.knn.kernels import merge_block, pair_distances

_PAIRS_PER_TASK = 16


def cell_layout(home: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by home cell -> (order [N], starts [C], counts [C]): cell c is order[starts[c]:+counts[c]]."""
    order = np.argsort(home, kind="stable")
    counts = np.bincount(home, minlength=nlist)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def cell_pairs(probes: np.ndarray, layout: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """[C, C] symmetric bool: cells a and b are compared (a member of one probes the other, or a == b)."""
    order, starts, counts = layout
    nlist = len(counts)
    pairs = np.zeros((nlist, nlist), dtype=bool)
    for cell in np.flatnonzero(counts):
        pairs[cell, np.unique(probes[order[starts[cell]:starts[cell] + counts[cell]]])] = True
    return pairs | pairs.T


def cell_search(x: np.ndarray, probes: np.ndarray, nlist: int, width: int, device: str = "cpu",
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `width` nearest among the cells paired with its own -> (D [N, width], I [N, width]).

    D holds euclidean distances measured as pair_distances does (inf, I -1, where fewer than width
    other points are compared); I holds row positions. A row is never listed as its own neighbour.
    """
    import torch

    layout = cell_layout(probes[:, 0], nlist)
    order = layout[0]
    grouped = np.ascontiguousarray(x[order])                                         # [N, D] by cell
    centred = grouped - grouped.astype(np.float64).mean(axis=0).astype(np.float32)   # [N, D]
    pairs = cell_pairs(probes, layout)
    search = _symmetric_search if device == "cpu" else _per_cell_search_torch
    found = search(torch.from_numpy(centred).to(device), pairs, layout, width, threads)  # [N, w] grouped
    distances = pair_distances(grouped, np.arange(len(x)), found, np.float64)        # [N, w]
    indices = np.where(found >= 0, order[np.maximum(found, 0)], -1)
    inverse = np.empty(len(x), dtype=np.int64)
    inverse[order] = np.arange(len(x))
    return distances[inverse], indices[inverse]


def _symmetric_search(data, pairs: np.ndarray, layout, width: int, threads: int | None) -> np.ndarray:
    """Every paired (a <= b) block once, offered to both sides -> [N, width] grouped positions."""
    _, starts, counts = layout
    n = data.shape[0]
    sq = (data * data).sum(dim=1)                                                    # [N]
    sq_np = sq.numpy()
    values = np.full((n, width), np.inf, dtype=np.float32)
    indices = np.full((n, width), -1, dtype=np.int64)
    locks = [threading.Lock() for _ in range(len(counts))]
    first, second = np.nonzero(np.triu(pairs, k=1))
    keep = (counts[first] > 0) & (counts[second] > 0)
    # Any order gives the same lists. Each cell with itself first (its own points are the best
    # candidates, so the lists' thresholds are tight early and few later entries pass); then the other
    # pairs spread over the workers, so that two rarely wait on one cell's lock.
    own = np.flatnonzero(counts)
    other = np.random.default_rng(0).permutation(np.stack([first[keep], second[keep]], axis=1))

    def block(a: int, b: int) -> None:
        sa, ma, sb, mb = int(starts[a]), int(counts[a]), int(starts[b]), int(counts[b])
        import torch

        scores = torch.addmm(sq[None, sb:sb + mb], data[sa:sa + ma], data[sb:sb + mb].T, alpha=-2.0)
        with locks[a], (locks[b] if b != a else _NO_LOCK):
            merge_block(scores.numpy(), sq_np[sa:sa + ma], sa, sb, values, indices)

    def task(chunk: np.ndarray) -> None:
        for a, b in chunk:
            block(int(a), int(b))

    diagonal = np.stack([own, own], axis=1)
    for jobs in (diagonal, other):
        chunks = np.array_split(jobs, max(1, len(jobs) // _PAIRS_PER_TASK))
        run_parallel([lambda c=c: task(c) for c in chunks], threads)
    return indices


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()


def _per_cell_search_torch(data, pairs: np.ndarray, layout, width: int, threads: int | None) -> np.ndarray:
    """CUDA: each cell's points against all its paired cells in one product, torch.topk -> [N, width]."""
    import torch

    _, starts, counts = layout
    sq = (data * data).sum(dim=1)                                                    # [N]
    out = np.full((data.shape[0], width), -1, dtype=np.int64)
    for cell in np.flatnonzero(counts):
        m, first = int(counts[cell]), int(starts[cell])
        positions = _positions(np.flatnonzero(pairs[cell]), starts, counts)         # [M] grouped rows
        pos_t = torch.from_numpy(positions).to(data.device)
        scores = torch.addmm(sq[pos_t][None, :], data[first:first + m], data[pos_t].T, alpha=-2.0)  # [m, M]
        own = torch.from_numpy(np.searchsorted(positions, np.arange(first, first + m))).to(data.device)
        scores[torch.arange(m, device=data.device), own] = float("inf")             # self
        take = min(width, len(positions) - 1)
        values, best = torch.topk(scores, take, dim=1, largest=False, sorted=True)   # [m, take]
        best = torch.where(torch.isfinite(values), pos_t[best], -1)
        out[first:first + m, :take] = best.cpu().numpy()
    return out


def _positions(cells: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Grouped-row positions of every point in `cells` (ascending cells) -> [sum(counts[cells])] int64."""
    sizes = counts[cells]
    offsets = np.repeat(starts[cells] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return np.arange(int(sizes.sum()), dtype=np.int64) + offsets
