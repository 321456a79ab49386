"""pipeline.knn.similarity: sigma 'auto' on the features' scale, the a_ij spread, first-neighbour overlap."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.knn.similarity import (
    auto_sigma,
    first_neighbour_overlap,
    pairwise_first_neighbour_overlap,
    similarity_from_distances,
    similarity_spread,
)


def test_auto_sigma_follows_the_scale_so_a_ij_does_not_depend_on_units():
    d = np.sort(np.random.default_rng(0).gamma(4.0, 1.0, size=(200, 8)), axis=1)   # [N, K] sorted rows
    a, sigma = similarity_from_distances(d, "auto")
    a4, sigma4 = similarity_from_distances(4 * d, "auto")                          # e.g. 256 px crops vs 64 px
    assert sigma == pytest.approx(np.median(d[:, -1])) and sigma4 == pytest.approx(4 * sigma)
    np.testing.assert_allclose(a, a4, rtol=1e-5)
    assert np.median(a[:, -1]) == pytest.approx(np.exp(-0.5), abs=0.02)            # median K-th neighbour
    fixed, _ = similarity_from_distances(d, 68.0)                                  # a pixel sigma far too big
    assert similarity_spread(fixed)["median"] > 0.99 and similarity_spread(a)["spread"] > 0.05


def test_auto_sigma_skips_duplicate_zero_distances():
    d = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    assert auto_sigma(d) == 2.0


def test_similarity_spread_by_hand():
    spread = similarity_spread(np.linspace(0.0, 1.0, 11))
    assert spread == {"median": 0.5, "p10": 0.1, "p90": 0.9, "spread": 0.8}
    assert similarity_spread(np.array([]))["median"] is None


def test_first_neighbour_overlap_on_the_rows_both_graphs_have():
    share, rows = first_neighbour_overlap(np.array([0, 1, 2, 3]), np.array([[1, 2], [0, 2], [3, 0], [2, 1]]),
                                          np.array([1, 2, 3, 9]), np.array([[0, 3], [1, 0], [2, 1], [1, 2]]))
    assert rows == 3 and share == pytest.approx(2 / 3)   # rows 1 (0 = 0), 2 (3 vs 1), 3 (2 = 2)
    assert first_neighbour_overlap(np.array([0]), np.array([[1]]), np.array([5]), np.array([[1]])) == (None, 0)

    class G:
        def __init__(self, ids, nbr):
            self.sample_id, self.neighbors = np.array(ids), np.array(nbr)

    pairs = pairwise_first_neighbour_overlap({"b": G([0, 1], [[1], [0]]), "a": G([0, 1], [[1], [2]])})
    assert pairs == [("a", "b", 0.5, 2)]
