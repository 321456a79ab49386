"""LDLVA: neighbour aggregation, lambda mixing and its gradient, centre loss and updates, hand-computed."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.methods.ldlva import (
    CalibrationNet,
    LdlvaConfig,
    aggregate_neighbors,
    balanced_class_weights,
    centre_pull_loss,
    centre_push,
    centre_push_energy,
    centre_update,
    lambda_gradient,
    mix_target,
    soft_cross_entropy,
)


def test_aggregate_neighbors_weighted_mean_and_empty_centre():
    centre_of_edge = torch.tensor([0, 0, 2])
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    contribution = torch.tensor([0.5, 1.5, 0.7])  # a_ij * c_ij
    dist, totals = aggregate_neighbors(centre_of_edge, probs, contribution, num_centres=3)
    torch.testing.assert_close(dist[0], torch.tensor([0.25, 0.75, 0.0]))
    torch.testing.assert_close(dist[1], torch.zeros(3))           # no neighbour: zero row, total 0
    torch.testing.assert_close(dist[2], torch.tensor([0.2, 0.3, 0.5]))
    torch.testing.assert_close(totals, torch.tensor([2.0, 0.0, 0.7]))


def test_mix_target_hand_computed():
    labels = torch.tensor([0, 2])
    neighbor = torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]])
    lam = torch.tensor([0.6, 1.0])
    out = mix_target(labels, neighbor, lam)
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(out.sum(1), torch.ones(2))


def test_lambda_gradient_matches_closed_form_and_moves_towards_agreement():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 0])                  # sample 1's label disagrees with the network
    neighbor = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    weights = torch.tensor([1.0, 2.0])
    lam_logit = torch.tensor([0.8, 0.8], requires_grad=True)
    lam = torch.sigmoid(lam_logit)
    loss = soft_cross_entropy(logits, mix_target(labels, neighbor, lam), weights)
    (grad,) = torch.autograd.grad(loss, lam_logit)
    log_p = logits.log_softmax(1)
    # dL/dlam_i = w_i / B * (-(log p_iy) + sum_c t_ic log p_ic); dlam/dlogit = lam (1 - lam)
    d_lam = weights / 2 * (-log_p[torch.arange(2), labels] + (neighbor * log_p).sum(1))
    expected = d_lam * lam.detach() * (1 - lam.detach())
    torch.testing.assert_close(grad, expected)
    # descent lowers lambda (trust the neighbours) where the label disagrees with the network,
    # and raises it where the label is the network's own prediction
    assert grad[1] > 0 > grad[0]
    # the closed form the method uses equals autograd
    torch.testing.assert_close(lambda_gradient(logits, labels, neighbor, lam.detach(), weights), grad)


def test_soft_cross_entropy_equals_ce_for_one_hot():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    target = torch.tensor([[0.0, 1.0, 0.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1]))
    torch.testing.assert_close(soft_cross_entropy(logits, target), expected)


def test_centre_pull_loss_hand_computed_and_gradient():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    centres = torch.zeros(2, 2)
    weight = torch.tensor([1.0, 0.5])
    loss = centre_pull_loss(features, labels, centres, weight)
    assert loss.item() == pytest.approx(0.5 * (1.0 * 1.0 + 0.5 * 4.0) / 2)
    loss.backward()
    # d/df_r = w_r (f_r - c_y) / R
    torch.testing.assert_close(features.grad, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))


def test_centre_update_weighted_wen_rule():
    centres = torch.zeros(2, 2)
    features = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    weight = torch.tensor([1.0, 1.0, 0.5])
    out = centre_update(centres, features, labels, weight, lr=0.5)
    # c0 = 0.5 * (2 + 4) / (1 + 2) = 1; c1 = 0.5 * 0.5 * 3 / (1 + 1) = 0.375
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 0.375]]))


def test_centre_push_moves_close_centres_apart():
    centres = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 3.0]])
    energy = centre_push_energy(centres)
    expected = math.exp(-0.25 / 2) + math.exp(-18 / 2) + math.exp(-(2.5 ** 2 + 9) / 2)
    assert energy.item() == pytest.approx(expected, rel=1e-5)
    pushed = centre_push(centres, lr=0.5)
    assert torch.dist(pushed[0], pushed[1]) > torch.dist(centres[0], centres[1])
    assert centre_push_energy(pushed) < energy


def test_balanced_class_weights():
    torch.testing.assert_close(balanced_class_weights((1, 3, 0)), torch.tensor([4 / 3, 4 / 9, 0.0]))


def test_calibration_net_range_and_floor():
    torch.manual_seed(0)
    net = CalibrationNet(feature_dim=4, hidden=(8,), floor_logit=-1.3)
    out = net(torch.randn(16, 4), torch.randn(16, 4))
    assert out.shape == (16,)
    assert (out >= torch.sigmoid(torch.tensor(-1.3)) - 1e-6).all() and (out < 1).all()


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="num_neighbors"):
        LdlvaConfig(num_neighbors=0)
    with pytest.raises(ConfigError, match="lambda_momentum"):
        LdlvaConfig(lambda_momentum=1.0)
