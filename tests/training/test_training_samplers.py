"""Samplers: progressive balancing, grouped batches holding exactly the graph's neighbours, resumable state."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.contract.errors import ConfigError
from pipeline.contract.graphs import read_graph
from training.data import PreparedVersion
from training.samplers import (
    BalancedSampler,
    GroupedBatchSampler,
    ShuffleSampler,
    group_members,
    progressive_class_probs,
)


def test_progressive_probs_move_from_empirical_to_uniform():
    counts = np.array([60, 30, 10, 0])
    np.testing.assert_allclose(progressive_class_probs(counts, 0, 5), [0.6, 0.3, 0.1, 0])
    np.testing.assert_allclose(progressive_class_probs(counts, 4, 5), [1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(progressive_class_probs(counts, 2, 5), [(0.6 + 1 / 3) / 2, (0.3 + 1 / 3) / 2,
                                                                       (0.1 + 1 / 3) / 2, 0])


def test_balanced_sampler_last_epoch_is_near_uniform():
    labels = np.repeat([0, 1, 2], [800, 150, 50])
    sampler = BalancedSampler(labels, 3, 100, epochs=3, seed=0)
    drawn = np.concatenate([b.indices for b in sampler.plan(2)])
    share = np.bincount(labels[drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.05)
    first = np.concatenate([b.indices for b in sampler.plan(0)])
    assert np.bincount(labels[first], minlength=3)[0] / len(first) > 0.7


def test_shuffle_state_resumes_remaining_batches_and_ranks_are_disjoint():
    sampler = ShuffleSampler(50, 8, seed=3)
    sampler.set_epoch(1)
    full = [b.indices.tolist() for b in sampler]
    resumed = ShuffleSampler(50, 8, seed=0)
    resumed.load_state_dict(sampler.state_dict(position=2))
    assert [b.indices.tolist() for b in resumed] == full[2:]
    ranks = [ShuffleSampler(50, 8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    a, b = (np.concatenate([x.indices for x in s.plan(0)]) for s in ranks)
    assert len(ranks[0]) == len(ranks[1]) == 3 and not set(a) & set(b)
    with pytest.raises(ConfigError, match="lower the batch size"):
        ShuffleSampler(5, 8).plan(0)


def test_group_members_fill_missing_neighbours_with_another_face_of_weight_zero():
    nbr = np.array([[1, -1], [0, 2], [1, 0]])
    sim = np.array([[0.9, 0.0], [0.8, 0.7], [0.6, 0.5]], np.float32)
    idx, group, role, weight = group_members(np.array([0, 2]), [(1, nbr, sim, 2)])
    assert idx.tolist() == [0, 1, 2, 2, 1, 0]   # centre 0's missing slot: the only other face, 2
    assert group.tolist() == [0, 0, 0, 1, 1, 1] and role.tolist() == [0, 1, 1, 0, 1, 1]
    np.testing.assert_allclose(weight, [0, 0.9, 0, 0, 0.6, 0.5])


def test_group_members_never_hold_a_face_twice():
    rng = np.random.default_rng(0)
    n, k = 40, 6
    # two spaces whose first neighbours mostly agree (as the AU and landmark graphs do), with -1 slots
    au = np.stack([rng.permutation(np.delete(np.arange(n), i))[:k] for i in range(n)])
    lm = au.copy()
    lm[:, 1:] = np.stack([rng.permutation(np.delete(np.arange(n), i))[:k - 1] for i in range(n)])
    au[::5, 2:] = -1
    sim = np.linspace(0.9, 0.4, k, dtype=np.float32)[None].repeat(n, 0)
    spaces = [(1, au, sim, 4), (2, lm, sim, 4)]
    idx, group, role, weight = group_members(np.arange(n), spaces, seed=3)
    groups = idx.reshape(n, 9)
    assert all(len(set(row.tolist())) == 9 for row in groups)
    weights = weight.reshape(n, 9)
    assert (groups[:, 5] != lm[:, 0]).all() and (weights[:, 5] < 0.9).all()  # shared first neighbour skipped
    assert (weights[::5, 3:5] == 0).all() and (weights[1::5, 1:5] > 0).all()  # -1 slots: fillers of weight 0
    again, *_ = group_members(np.arange(n), spaces, seed=3)
    np.testing.assert_array_equal(idx, again)             # seeded fillers
    with pytest.raises(ConfigError, match="distinct faces"):
        group_members(np.arange(3), [(1, np.full((3, 4), -1), np.zeros((3, 4), np.float32), 4)])


def test_grouped_batches_contain_exactly_the_graph_neighbours(tiny_prepared_version):
    v = tiny_prepared_version
    pv = PreparedVersion.open(v.dataset, "latest", v.artifacts_root, v.manifests_root)
    train = pv.split_data("train", "clean")
    au, lm = pv.train_graph("au", train), pv.train_graph("landmarks", train)
    sampler = GroupedBatchSampler(len(train), au, lm, 4, 4, groups_per_batch=8, seed=0)
    graphs = {1: read_graph(pv.directory / "graphs/au.parquet"), 2: read_graph(pv.directory / "graphs/landmarks.parquet")}
    in_train = set(train.sample_id.tolist())
    centres_seen = []
    for request in sampler.plan(0):
        assert len(request.indices) == 8 * 9
        sid = train.sample_id[request.indices]
        for g in range(8):
            rows = request.group == g
            centre = sid[rows & (request.role == 0)]
            assert len(centre) == 1
            centres_seen.append(int(centre[0]))
            assert len(set(sid[rows].tolist())) == 9   # no face twice in a group
            taken = {int(centre[0])}
            for role in (1, 2):
                members = rows & (request.role == role) & (request.weight > 0)
                graph = graphs[role]
                expected = [n for n in graph.neighbors[centre[0]] if n in in_train and n not in taken][:4]
                taken |= set(expected)
                assert sid[members].tolist() == expected
                sims = dict(zip(graph.neighbors[centre[0]].tolist(), graph.similarity[centre[0]].tolist()))
                np.testing.assert_allclose(request.weight[members], [sims[n] for n in expected], rtol=1e-6)
    assert len(set(centres_seen)) == len(centres_seen) == len(train) // 8 * 8
