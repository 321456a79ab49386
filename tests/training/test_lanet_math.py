"""LA-Net pieces against small hand-computed examples (LDE, EL loss, memory bank, landmark losses)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.contract.layouts import AFLW19_FROM_IBUG68, aflw19_from_ibug68_torch
from training.evaluate import js_divergence_bits
from training.methods.lanet.diagnostics import LDEEpochStats, confident_precision, target_recovery, vote_divergence
from training.methods.lanet.el import MemoryBank, contrastive_loss, momentum_update, pseudo_labels, same_group_mask
from training.methods.lanet.landmarks import (
    adaptive_wing_loss,
    gaussian_heatmaps,
    heatmap_weight_map,
    regression_loss,
)
from training.methods.lanet.lde import (
    ContributionScorer,
    LabelDistributionEstimator,
    aggregate_distributions,
    cosine_knn,
    ema_blend,
    kl_to_targets,
    one_hot_targets,
)


# ------------------------------------------------------------------------------------------ LDE
def test_knn_uses_cosine_not_euclidean_distance():
    # row 1 points the same way as row 0 but is far away; row 2 is close but at 45 degrees
    features = torch.tensor([[1.0, 0.0], [10.0, 1.0], [0.5, 0.5]])
    assert cosine_knn(features, 1)[0].tolist() == [1]        # euclidean would pick row 2
    assert cosine_knn(features, 2)[0].tolist() == [1, 2]


def test_knn_excludes_self_even_with_an_identical_row():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    neighbours = cosine_knn(features, 1)
    assert neighbours[:, 0].tolist() == [2, 3, 0, 1]
    everyone = cosine_knn(features, 8)                          # k clipped to B - 1
    assert everyone.shape == (4, 3)
    for i, row in enumerate(everyone.tolist()):
        assert i not in row and sorted(row) == sorted(set(range(4)) - {i})


def test_knn_needs_two_rows():
    with pytest.raises(ValueError):
        cosine_knn(torch.ones(1, 3), 8)


def test_aggregation_is_contribution_weighted_mean_of_neighbour_predictions():
    probabilities = torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.0, 1.0]])
    neighbours = torch.tensor([[1, 2]])
    contributions = torch.tensor([[1.0, 3.0]])
    out = aggregate_distributions(contributions, neighbours, probabilities)
    assert torch.allclose(out, torch.tensor([[0.25, 0.75]]))
    # normalised: scaling all contributions of a row changes nothing, and rows sum to 1
    assert torch.allclose(aggregate_distributions(contributions * 0.01, neighbours, probabilities), out)
    assert torch.allclose(out.sum(1), torch.ones(1))


def test_contribution_scores_are_probabilities_with_the_neighbour_shape():
    torch.manual_seed(0)
    scorer = ContributionScorer(dim=6, hidden=8)
    features = torch.randn(5, 6)
    neighbours = cosine_knn(features, 3)
    scores = scorer(features, neighbours)
    assert scores.shape == (5, 3)
    assert bool(((scores > 0) & (scores < 1)).all())
    # c_ij = sigmoid(f([g1(z_i), g2(z_j)])), pair by pair
    with torch.no_grad():
        for i in range(5):
            for slot in range(3):
                j = int(neighbours[i, slot])
                pair = torch.cat([scorer.g1(features[i]), scorer.g2(features[j])])
                assert scores[i, slot].item() == pytest.approx(torch.sigmoid(scorer.f(pair)).item(), rel=1e-5)


def test_ema_blend_and_one_hot_initialisation():
    init = one_hot_targets(torch.tensor([0, 2, 1]), 3)
    assert init.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    blended = ema_blend(init[:1], torch.tensor([[0.0, 0.5, 0.5]]), 0.9)
    assert torch.allclose(blended, torch.tensor([[0.9, 0.05, 0.05]]))


class _FixedEstimate(LabelDistributionEstimator):
    """FAKE new estimate (a constant) so the EMA bookkeeping can be checked by hand."""

    def __init__(self, *args, fixed: torch.Tensor, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed = fixed

    def new_estimate(self, expression, landmark, logits):
        return self.fixed


def test_estimator_starts_one_hot_and_updates_only_the_batch_rows():
    labels = torch.tensor([0, 2, 1, 1])
    fixed = torch.tensor([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]])
    lde = _FixedEstimate(labels, 3, expression_dim=4, landmark_dim=None, omega=0.9, hidden=4, fixed=fixed)
    assert torch.equal(lde.targets, one_hot_targets(labels, 3))
    out = lde(torch.zeros(2, 4), None, torch.zeros(2, 3), torch.tensor([0, 3]))
    assert torch.allclose(out, torch.tensor([[0.9, 0.05, 0.05], [0.0, 1.0, 0.0]]))
    assert torch.allclose(lde.targets[[0, 3]], out)
    assert lde.targets[[1, 2]].tolist() == [[0, 0, 1], [0, 1, 0]]     # untouched rows
    again = lde(torch.zeros(2, 4), None, torch.zeros(2, 3), torch.tensor([0, 3]))
    assert torch.allclose(again[0], torch.tensor([0.81, 0.095, 0.095]))   # 0.9 * 0.9, 0.9 * 0.05 + 0.1 * 0.5


def test_estimator_averages_the_two_spaces():
    torch.manual_seed(1)
    lde = LabelDistributionEstimator(torch.tensor([0, 1, 2, 0, 1]), 3, 4, 6, k=2, hidden=8)
    u, v, logits = torch.randn(5, 4), torch.randn(5, 6), torch.randn(5, 3)
    probabilities = torch.softmax(logits, -1)
    expected = 0.5 * (lde.space_estimate(lde.expression_scorer, u, probabilities)
                      + lde.space_estimate(lde.landmark_scorer, v, probabilities))
    assert torch.allclose(lde.new_estimate(u, v, logits), expected, atol=1e-6)


def test_a_flipped_sample_follows_its_agreeing_neighbours():
    # sample 0 carries noisy label 5; its 8 neighbours all predict class 2 with certainty, so every
    # aggregated estimate is one-hot 2 whatever the contributions, and after n EMA updates the share of
    # the noisy label is 0.9^n: the argmax turns to 2 at n = 7 (0.478 < 0.522)
    torch.manual_seed(2)
    labels = torch.tensor([5] + [2] * 8)
    lde = LabelDistributionEstimator(labels, 7, expression_dim=3, landmark_dim=None, k=8, omega=0.9, hidden=8)
    features = torch.randn(9, 3)
    logits = torch.full((9, 7), -30.0)
    logits[1:, 2] = 30.0
    for update in range(1, 8):
        targets = lde(features, None, logits, torch.arange(9))
        assert int(targets[0].argmax()) == (2 if update >= 7 else 5), update
    assert lde.targets[0, 5].item() == pytest.approx(0.9 ** 7, rel=1e-4)


def test_kl_to_targets_by_hand():
    logits = torch.zeros(2, 2)                                   # uniform predictions
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    assert kl_to_targets(logits, targets).item() == pytest.approx((math.log(2) + 0.0) / 2, abs=1e-6)


# ------------------------------------------------------------------------------------------- EL
def test_pseudo_labels_threshold_is_strict():
    targets = torch.tensor([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.1, 0.7, 0.2]])
    labels, confident = pseudo_labels(targets, 0.7)
    assert labels.tolist() == [0, 0, 1]
    assert confident.tolist() == [True, False, False]


def test_masks_for_confident_and_ambiguous_samples():
    # sample ids 10..14; A: confident 1, B: ambiguous (argmax 1), C: confident 2, D: confident 1, E: ambiguous 0
    labels = torch.tensor([1, 1, 2, 1, 0])
    confident = torch.tensor([True, False, True, True, False])
    ids = torch.tensor([10, 11, 12, 13, 14])
    mask = same_group_mask(labels, confident, ids, labels, confident, ids)
    expected = torch.tensor([
        [1, 0, 0, 1, 0],     # A: itself and D (same pseudo-label), not the ambiguous B
        [0, 1, 0, 0, 0],     # B: only its own other view
        [0, 0, 1, 0, 0],
        [1, 0, 0, 1, 0],
        [0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert torch.equal(~mask, ~expected)                          # negatives are the complement


def test_ambiguity_never_collides_with_a_class_id():
    # an ambiguous sample with training index 0 next to a confident class-0 sample (the official code's
    # -index sentinel makes both "0")
    labels, confident, ids = torch.tensor([0, 0]), torch.tensor([False, True]), torch.tensor([0, 5])
    mask = same_group_mask(labels, confident, ids, labels, confident, ids)
    assert mask.tolist() == [[True, False], [False, True]]


def test_contrastive_loss_value_by_hand():
    tau = 0.5
    query = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    positive = torch.tensor([[True, True, False]])
    bank = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    negative = torch.tensor([[True, True, False]])               # the third bank key is in the group
    negatives = math.exp(0.0) + math.exp(-2.0)
    by_hand = 0.5 * (-math.log(math.exp(2.0) / (math.exp(2.0) + negatives))
                     - math.log(1.0 / (1.0 + negatives)))
    got = contrastive_loss(query, keys, positive, bank, negative, tau)
    assert got.item() == pytest.approx(by_hand, rel=1e-6)


def test_contrastive_loss_edge_cases_stay_finite():
    query = torch.nn.functional.normalize(torch.randn(2, 3), dim=1).requires_grad_(True)
    keys = torch.nn.functional.normalize(torch.randn(2, 3), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    # query 0 has no negative at all (loss 0 for it), query 1 has no positive (left out of the mean)
    positive = torch.tensor([[True, False], [False, False]])
    negative = torch.tensor([[False] * 4, [True] * 4])
    loss = contrastive_loss(query, keys, positive, bank, negative, 0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(query.grad).all()


def test_memory_bank_enqueue_and_wrap_around():
    bank = MemoryBank(size=5, dim=2, seed=0)
    assert bank.ids.tolist() == [-1] * 5 and not bool(bank.confident.any())
    assert torch.allclose(bank.expression_keys.norm(dim=1), torch.ones(5))

    def batch(start: int, n: int):
        keys = torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
        return keys, -keys, torch.arange(n) % 3, torch.tensor([True, False, True][:n]), torch.arange(start, start + n)

    bank.enqueue(*batch(0, 3))
    assert int(bank.pointer) == 3
    assert bank.ids.tolist() == [0, 1, 2, -1, -1]
    bank.enqueue(*batch(3, 3))                                   # slots 3, 4, then wraps to 0
    assert int(bank.pointer) == 1
    assert bank.ids.tolist() == [5, 1, 2, 3, 4]
    assert bank.expression_keys[:, 0].tolist() == [5, 1, 2, 3, 4]
    assert bank.landmark_keys[:, 0].tolist() == [-5, -1, -2, -3, -4]
    assert bank.confident.tolist() == [True, False, True, True, False]
    assert bank.labels.tolist() == [2, 1, 2, 0, 1]
    keys = torch.arange(7, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    bank.enqueue(keys, keys, torch.zeros(7, dtype=torch.long), torch.ones(7, dtype=torch.bool), torch.arange(7))
    assert sorted(bank.ids.tolist()) == [2, 3, 4, 5, 6]          # only the last `size` rows are kept
    assert int(bank.pointer) == 1


def test_bank_negatives_leave_out_the_query_group_and_own_copies():
    bank = MemoryBank(size=4, dim=2)
    bank.enqueue(torch.eye(2).repeat(2, 1), torch.eye(2).repeat(2, 1), torch.tensor([1, 1, 0, 2]),
                 torch.tensor([True, False, True, True]), torch.tensor([7, 8, 9, 7]))
    mask = bank.negative_mask(torch.tensor([1, 2]), torch.tensor([True, False]), torch.tensor([3, 7]))
    assert mask.tolist() == [[False, True, True, True],           # same confident label 1 is not a negative
                             [False, True, True, False]]          # ambiguous id 7: its own copies are not


def test_momentum_update_by_hand():
    query, key = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        query.weight.fill_(1.0), query.bias.fill_(0.0), key.weight.fill_(0.0), key.bias.fill_(1.0)
    momentum_update(query, key, 0.9)
    assert key.weight.item() == pytest.approx(0.1) and key.bias.item() == pytest.approx(0.9)


# -------------------------------------------------------------------------------------- landmarks
def test_regression_loss_normalises_by_image_size_and_skips_missing_rows():
    points = torch.tensor([[[10.0, 20.0]], [[float("nan"), 1.0]]])   # width 80, height 40
    perfect = torch.tensor([[[0.125, 0.5]], [[0.0, 0.0]]])
    assert regression_loss(perfect, points, height=40, width=80).item() == pytest.approx(0.0)
    off = torch.tensor([[[0.225, 0.5]], [[9.0, 9.0]]])
    assert regression_loss(off, points, height=40, width=80).item() == pytest.approx(0.005, rel=1e-5)


def test_aflw19_layout_from_68_points():
    points = torch.arange(68 * 2, dtype=torch.float32).view(1, 68, 2)
    out = aflw19_from_ibug68_torch(points)
    assert out.shape == (1, 19, 2) and len(AFLW19_FROM_IBUG68) == 19
    assert torch.equal(out[0, 0], points[0, 17])
    assert torch.allclose(out[0, 7], points[0, [37, 38, 40, 41]].mean(0))
    assert torch.equal(out[0, 18], points[0, 8])


def test_gaussian_heatmap_peaks_at_the_point():
    maps = gaussian_heatmaps(torch.tensor([[[10.5, 2.5]]]), (16, 16), (8, 8), sigma=1.0)   # stride 2: centre (5, 1)
    assert maps.shape == (1, 1, 8, 8)
    peak = divmod(int(maps.flatten().argmax()), 8)
    assert peak == (1, 5) and maps.max().item() == pytest.approx(1.0)
    assert maps[0, 0, 1, 6].item() == pytest.approx(math.exp(-0.5))
    assert gaussian_heatmaps(torch.full((1, 1, 2), float("nan")), (16, 16), (8, 8), 1.0).abs().sum() == 0


def test_adaptive_wing_loss_by_hand():
    omega, theta, eps, alpha = 14.0, 0.5, 1.0, 2.1
    # background pixel (y 0), small error 0.1: omega * ln(1 + 0.1^2.1)
    small = adaptive_wing_loss(torch.tensor([0.1]), torch.tensor([0.0]))
    assert small.item() == pytest.approx(omega * math.log1p(0.1 ** 2.1), rel=1e-5)
    # foreground pixel (y 1), large error 0.8: A * 0.8 - C
    p = alpha - 1.0
    a = omega / (1 + (theta / eps) ** p) * p * (theta / eps) ** (p - 1) / eps
    c = theta * a - omega * math.log1p((theta / eps) ** p)
    large = adaptive_wing_loss(torch.tensor([0.2]), torch.tensor([1.0]))
    assert large.item() == pytest.approx(a * 0.8 - c, rel=1e-5)
    # continuous at |error| = theta
    below = adaptive_wing_loss(torch.tensor([0.5 - 1e-4]), torch.tensor([1.0]))
    above = adaptive_wing_loss(torch.tensor([0.5 + 1e-4]), torch.tensor([1.0]))
    assert below.item() == pytest.approx(above.item(), abs=1e-2)


def test_heatmap_weight_map_dilates_the_foreground():
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 2, 2] = 1.0
    weights = heatmap_weight_map(target, weight=10.0, threshold=0.2)
    assert weights[0, 0, 1:4, 1:4].eq(11.0).all() and weights.sum().item() == pytest.approx(9 * 11 + 16)


# ------------------------------------------------------------------------------------ diagnostics
def test_jensen_shannon_bounds():
    one_hot = torch.eye(3)
    np.testing.assert_allclose(js_divergence_bits(one_hot, one_hot), np.zeros(3), atol=1e-12)
    np.testing.assert_allclose(js_divergence_bits(one_hot, one_hot.roll(1, dims=1)), np.ones(3))
    half = js_divergence_bits(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]))
    by_hand = 0.5 * math.log2(1 / 0.75) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert half.item() == pytest.approx(by_hand, rel=1e-6)
    assert half.item() == pytest.approx(0.31127812, rel=1e-6)       # = 0.2158 nats / ln 2


def test_flipped_recovery_and_vote_divergence():
    targets = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    noisy = torch.tensor([0, 0, 0, 1])
    clean = torch.tensor([0, 1, 0, -1])                          # the last sample was never seen
    out = target_recovery(targets, noisy, clean)
    assert out["flipped_share"] == pytest.approx(1 / 3)
    assert out["flipped_recovered"] == 1.0                       # sample 1: noisy 0, target says 1 = clean
    assert out["kept_agreement"] == 0.5                          # sample 0 kept, sample 2 moved away
    votes = torch.tensor([[1.0, 0.0], [0.0, 4.0], [0.0, 0.0], [1.0, 1.0]])
    div = vote_divergence(targets, noisy, votes)
    assert div["targets_votes_js_bits"] < div["labels_votes_js_bits"]


def test_lde_epoch_stats_by_hand():
    # two batches of 2 samples, K = 1 in the expression space only; means run over all rows of the epoch
    stats = LDEEpochStats(delta=0.7)
    first = {"new": torch.tensor([[0.8, 0.2], [0.4, 0.6]]), "probabilities": torch.tensor([[0.9, 0.1], [0.5, 0.5]]),
             "expression_neighbours": torch.tensor([[1], [0]]),
             "expression_contributions": torch.tensor([[0.25], [0.75]])}
    stats.update(first, noisy=torch.tensor([0, 1]), clean=torch.tensor([0, 0]))
    second = {"new": torch.tensor([[0.7, 0.3], [1.0, 0.0]]), "probabilities": torch.tensor([[0.7, 0.3], [0.6, 0.4]]),
              "expression_neighbours": torch.tensor([[1], [0]]),
              "expression_contributions": torch.tensor([[0.5], [0.5]])}
    stats.update(second, noisy=torch.tensor([1, 1]), clean=None)
    out = stats.pop()
    assert out["lde_new_max_share"] == pytest.approx((0.8 + 0.6 + 0.7 + 1.0) / 4)
    assert out["lde_new_confident_share"] == pytest.approx(2 / 4)     # 0.7 is not above delta
    assert out["lde_prediction_max"] == pytest.approx((0.9 + 0.5 + 0.7 + 0.6) / 4)
    assert out["lde_expression_contribution_mean"] == pytest.approx(0.5)
    assert out["lde_expression_contribution_row_spread"] == 0.0       # one neighbour per row
    assert out["lde_expression_same_noisy"] == pytest.approx(2 / 4)   # first batch differs, second agrees
    assert out["lde_expression_same_clean"] == pytest.approx(1.0)     # only the first batch had clean labels
    assert "lde_landmark_same_noisy" not in out
    assert stats.pop() == {}                                          # reset after pop


def test_confident_precision_counts_only_confident_known_rows():
    targets = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9], [0.9, 0.1], [0.5, 0.5]])
    clean = torch.tensor([0, 1, 1, -1, 0])          # row 3 never seen: unknown clean label
    assert confident_precision(targets, clean, delta=0.55) == pytest.approx(2 / 3)   # rows 0, 1, 2: 0 and 2 right
    assert confident_precision(targets, clean, delta=0.5) == pytest.approx(2 / 3)    # 0.5 is not above delta
    assert math.isnan(confident_precision(targets, clean, delta=0.95))
