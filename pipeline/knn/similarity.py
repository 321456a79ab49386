"""Graph similarities a_ij = exp(-d^2 / (2 sigma^2)) on the features' own scale, and what they carry.

LDL-ALSG's local similarity only informs when sigma sits on the scale of the neighbour distances: a sigma
far above them gives a_ij ~ 1 for every pair (the paper's 68 on 64 px landmark crops: median 0.995), one far
below gives a_ij ~ 0 (sigma 1 on landmark-estimated AU intensities: median 0.007). So the default sigma is
'auto': the median distance to the K-th neighbour over all rows, which puts a median K-th neighbour at
exp(-1/2) = 0.61 whatever the features' units (pixels of any crop size, AU intensities, valence-arousal).
A number still sets sigma by hand (e.g. the paper's 68 for landmarks in 224 px pixels).

`similarity_spread` summarises a_ij (median and 10th / 90th percentiles, written into every graph file's
metadata and the version report); `first_neighbour_overlap` is the share of rows whose first neighbour is
the same in two graphs (two spaces that agree there give grouped batches the same face twice).
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

AUTO_SIGMA = "auto"
SIGMA_RULE = "auto: median distance to the K-th neighbour"


def auto_sigma(distances: np.ndarray) -> float:
    """Median of the rows' K-th neighbour distance ([N, K] sorted rows); duplicates (0) fall back to > 0."""
    kth = np.asarray(distances, dtype=np.float64)[:, -1]                          # [N]
    sigma = float(np.median(kth)) if len(kth) else 1.0
    if sigma <= 0:
        positive = kth[kth > 0]
        sigma = float(np.median(positive)) if len(positive) else 1.0
        log.warning("median K-th neighbour distance is 0 (duplicates); sigma set to %g", sigma)
    return sigma


def similarity_from_distances(distances: np.ndarray, sigma: float | str) -> tuple[np.ndarray, float]:
    """a_ij = exp(-d^2 / (2 sigma^2)) -> ([N, K] float32, sigma used); sigma 'auto' = auto_sigma(distances)."""
    if sigma == AUTO_SIGMA:
        sigma = auto_sigma(distances)
    d = np.asarray(distances, dtype=np.float64)                                   # [N, K]
    return np.exp(-d * d / (2.0 * float(sigma) ** 2)).astype(np.float32), float(sigma)


def similarity_spread(similarity: np.ndarray) -> dict:
    """{'median', 'p10', 'p90', 'spread' (p90 - p10)} of every a_ij of a graph (None when it is empty)."""
    values = np.asarray(similarity, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median": None, "p10": None, "p90": None, "spread": None}
    p10, median, p90 = (float(v) for v in np.percentile(values, [10, 50, 90]))
    return {"median": round(median, 6), "p10": round(p10, 6), "p90": round(p90, 6), "spread": round(p90 - p10, 6)}


def first_neighbour_overlap(ids_a: np.ndarray, neighbors_a: np.ndarray, ids_b: np.ndarray,
                            neighbors_b: np.ndarray) -> tuple[float | None, int]:
    """Share of the rows both graphs have whose first neighbour is the same sample -> (share, rows compared).

    ids_* [N_*] row sample ids; neighbors_* [N_*, K_*] neighbour sample ids, nearest first.
    """
    ids_a, ids_b = np.asarray(ids_a, np.int64), np.asarray(ids_b, np.int64)
    common, pos_a, pos_b = np.intersect1d(ids_a, ids_b, assume_unique=True, return_indices=True)
    if len(common) == 0:
        return None, 0
    first_a = np.asarray(neighbors_a)[pos_a, 0]                                   # [M]
    first_b = np.asarray(neighbors_b)[pos_b, 0]                                   # [M]
    return float(np.mean(first_a == first_b)), int(len(common))


def pairwise_first_neighbour_overlap(graphs: dict) -> list[tuple[str, str, float | None, int]]:
    """Every pair of graphs {space: object with .sample_id [N] and .neighbors [N, K]} -> (a, b, share, rows)."""
    names = sorted(graphs)
    return [(a, b, *first_neighbour_overlap(graphs[a].sample_id, graphs[a].neighbors,
                                            graphs[b].sample_id, graphs[b].neighbors))
            for i, a in enumerate(names) for b in names[i + 1:]]
