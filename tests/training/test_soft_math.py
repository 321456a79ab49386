"""SOFT: soft label smoothing, uncertainty-weighted CE, ramp-up and teacher EMA against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.contract.errors import ConfigError
from training.methods.soft import (
    SoftConfig,
    consistency_kl,
    ema_decay_at,
    ema_update_,
    sigmoid_rampup,
    soft_label_smoothing,
    uncertainty_weighted_ce,
)


def test_sls_two_confident_classes_hand_computed():
    q = torch.tensor([[0.5, 0.3, 0.1, 0.1]])
    # k = 2 above 1/8: 0.5/0.8*0.7, 0.3/0.8*0.7; the two others share 0.3 -> 0.15 each
    expected = torch.tensor([[0.4375, 0.2625, 0.15, 0.15]])
    torch.testing.assert_close(soft_label_smoothing(q, tau=0.125, eps=0.3), expected)


def test_sls_seven_classes_hand_computed():
    q = torch.tensor([[0.30, 0.25, 0.20, 0.10, 0.08, 0.04, 0.03]])
    # k = 3 (sum .75): .3/.75*.7 = .28, .25/.75*.7 = .233333, .2/.75*.7 = .186667; four others .3/4 = .075
    expected = torch.tensor([[0.28, 0.7 / 3.0, 0.14 / 0.75, 0.075, 0.075, 0.075, 0.075]])
    out = soft_label_smoothing(q, tau=1 / 8, eps=0.3)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(1), torch.ones(1))


def test_sls_k1_is_ordinary_label_smoothing():
    q = torch.tensor([[0.05, 0.90, 0.03, 0.02], [0.02, 0.03, 0.05, 0.90]])
    eps, num_classes = 0.3, 4
    one_hot = nn.functional.one_hot(q.argmax(1), num_classes).float()
    label_smoothing = one_hot * (1 - eps) + (1 - one_hot) * eps / (num_classes - 1)
    torch.testing.assert_close(soft_label_smoothing(q, tau=0.125, eps=eps), label_smoothing)


def test_sls_edge_cases_k0_uniform_and_kC_unchanged():
    uniform_q = torch.full((1, 4), 0.25)
    # tau = 1/4: no class is strictly above -> k = 0 -> uniform
    torch.testing.assert_close(soft_label_smoothing(uniform_q, tau=0.25, eps=0.3), uniform_q)
    q = torch.tensor([[0.4, 0.3, 0.15, 0.15]])
    # tau = 0.1 < 1/C: all four confident -> k = C -> unchanged
    torch.testing.assert_close(soft_label_smoothing(q, tau=0.1, eps=0.3), q)


def test_sls_rows_sum_to_one_on_random_batch():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(64, 7, generator=gen).mul(3).softmax(1)
    out = soft_label_smoothing(q, tau=1 / 8, eps=0.3)
    torch.testing.assert_close(out.sum(1), torch.ones(64))
    assert (out > 0).all()


def test_sls_rejects_bad_eps():
    with pytest.raises(ConfigError):
        soft_label_smoothing(torch.full((1, 3), 1 / 3), eps=1.5)


def test_uncertainty_weighted_ce_hand_computed_and_alpha_gradient():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    alpha = torch.tensor([[0.5], [1.0]], requires_grad=True)
    labels = torch.tensor([0, 0])
    loss = uncertainty_weighted_ce(logits, alpha, labels)
    # sample 0: scaled [1, 0], CE = log(1 + e^-1); sample 1: [0, 1], CE = log(1 + e)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d CE(a z, y) / d a = -(z_y - sum_c p_c z_c) / B
    p0 = torch.tensor([1.0, 0.0]).softmax(0)
    p1 = torch.tensor([0.0, 1.0]).softmax(0)
    g0 = -(2.0 - (p0 * torch.tensor([2.0, 0.0])).sum()) / 2
    g1 = -(0.0 - (p1 * torch.tensor([0.0, 1.0])).sum()) / 2
    torch.testing.assert_close(alpha.grad, torch.stack([g0, g1]).view(2, 1))
    # a wrongly-labelled confident sample (1) gains by lowering alpha: positive gradient
    assert alpha.grad[1, 0] > 0 > alpha.grad[0, 0]


def test_consistency_kl_zero_at_target_and_positive_elsewhere():
    target = torch.tensor([[0.7, 0.2, 0.1]])
    assert consistency_kl(target.log(), target).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[0.0, 0.0, 0.0]])
    expected = (target * (target.log() - math.log(1 / 3))).sum().item()
    assert consistency_kl(student, target).item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 5) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(2.5, 5) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(5, 5) == 1.0
    assert sigmoid_rampup(9, 5) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0


def test_teacher_ema_update_and_true_average_start():
    assert ema_decay_at(1, 0.999) == pytest.approx(0.5)
    assert ema_decay_at(3, 0.999) == pytest.approx(0.75)
    assert ema_decay_at(5000, 0.999) == pytest.approx(0.999)
    student, teacher = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.fill_(3.0)
        student.bias.fill_(-1.0)
        teacher.weight.fill_(1.0)
        teacher.bias.fill_(1.0)
    ema_update_(teacher, student, 0.999)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 1.002))
    torch.testing.assert_close(teacher.bias, torch.full((1,), 0.998))
    # repeated updates converge to the student
    for _ in range(300):
        ema_update_(teacher, student, 0.95)
    torch.testing.assert_close(teacher.weight, student.weight, atol=1e-4, rtol=0)


def test_config_rejects_unknown_choices():
    with pytest.raises(ConfigError, match="teacher_view"):
        SoftConfig(teacher_view="other")
    with pytest.raises(ConfigError, match="eval_branch"):
        SoftConfig(eval_branch="both")
