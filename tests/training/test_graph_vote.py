"""graph_vote: targets are the a_ij-weighted vote of the noisy labels of a face and its neighbours."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.methods import DataInfo, StepInfo, method_class
from training.methods.graph_vote import GraphVoteConfig, vote_targets


def test_vote_targets_by_hand_skip_repeats_and_missing_neighbours():
    labels = torch.tensor([0, 1, 1, 2])
    au = (torch.tensor([[1, 2], [0, 2], [3, -1], [2, 0]]), torch.tensor([[0.5, 0.2], [0.4, 0.3], [0.6, 0.0],
                                                                         [0.9, 0.1]]))
    lm = (torch.tensor([[1, 3], [2, 3], [1, 3], [1, 2]]), torch.tensor([[0.8, 0.7], [0.5, 0.25], [0.5, 0.4],
                                                                       [0.3, 0.2]]))
    targets, own = vote_targets(labels, 3, [(*au, 1), (*lm, 1)])
    # face 0: itself (1 x class 0), AU neighbour 1 (0.5 x class 1), landmark neighbour 1 again -> skipped,
    # its next one 3 (0.7 x class 2)
    np.testing.assert_allclose(targets[0], torch.tensor([1.0, 0.5, 0.7]) / 2.2, rtol=1e-6)
    # face 2: AU 3 (0.6 x class 2), landmark 1 (0.5 x class 1); face 3: AU 2 (0.9 x 1), landmark 1 (0.3 x 1)
    np.testing.assert_allclose(targets[2], torch.tensor([0.0, 1.5, 0.6]) / 2.1, rtol=1e-6)
    np.testing.assert_allclose(targets[3], torch.tensor([0.0, 1.2, 1.0]) / 2.2, rtol=1e-6)
    np.testing.assert_allclose(targets.sum(1), torch.ones(4), rtol=1e-6)
    np.testing.assert_allclose(own, targets[torch.arange(4), labels])


def _info(n: int = 12, classes: int = 3) -> DataInfo:
    labels = torch.arange(n) % classes
    nbr = torch.stack([(torch.arange(1, 5) * classes + i) % n for i in range(n)])   # same-class neighbours
    sim = torch.full((n, 4), 0.5)
    return DataInfo(num_classes=classes, num_train=n, class_counts=tuple(np.bincount(labels, minlength=classes)),
                    train_labels=labels, graphs={"au": (nbr, sim), "landmarks": (nbr.flip(1), sim)})


def test_graph_vote_trains_on_its_targets_and_reports_them():
    torch.manual_seed(0)
    method = method_class("graph_vote")(GraphVoteConfig(backbone="tiny", k_au=2, k_landmarks=2), _info())
    batch = {"image": torch.randn(6, 3, 32, 32), "label": torch.arange(6) % 3, "index": torch.arange(6)}
    out = method.training_step(batch, StepInfo(0, 0, 1, 1))
    assert set(out) >= {"loss", "logits", "ce", "own_share"} and out["loss"].requires_grad
    expected = -(method.targets[:6] * torch.log_softmax(out["logits"].float(), 1)).sum(1).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert method.target_distributions().shape == (12, 3)
    diagnostics = method.on_epoch_end(1, None)
    assert diagnostics["vote_changes_label"] == 0.0 and diagnostics["vote_own_share"] == pytest.approx(1.0)


def test_graph_vote_names_a_missing_graph():
    info = _info()
    info = DataInfo(**{**info.__dict__, "graphs": {"au": info.graphs["au"]}})
    with pytest.raises(ConfigError, match="graph 'landmarks'"):
        method_class("graph_vote")(GraphVoteConfig(backbone="tiny"), info)


def test_ldlva_lambda_by_flip_auroc_by_hand():
    from training.methods.ldlva import lambda_by_flip

    lam = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.2, 0.5])
    flipped = torch.tensor([1, 1, 0, 0, 0, -1], dtype=torch.int8)
    out = lambda_by_flip(lam, flipped)
    assert out["lambda_flipped"] == pytest.approx(0.15) and out["lambda_clean"] == pytest.approx((0.9 + 0.8 + 0.2) / 3)
    # pairs (flipped, clean): 0.1 < all 3; 0.2 < 0.9, 0.8 and ties 0.2 (half): (3 + 2.5) / 6
    assert out["lambda_flip_auroc"] == pytest.approx(5.5 / 6)
    assert np.isnan(lambda_by_flip(lam, torch.zeros(6, dtype=torch.int8))["lambda_flip_auroc"])
