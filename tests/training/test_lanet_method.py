"""LA-Net as a Method on FAKE random batches: gradients, momentum encoders, ablations, state round trip,
diagnostics and the official-code heatmap option."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.contract.errors import ConfigError
from pipeline.contract.tables import read_table, vectors_to_numpy
from training.methods import DataInfo, StepInfo, method_class
from training.methods.lanet.diagnostics import targets_path
from training.methods.lanet.method import ABLATION_PRESETS, LANet, LANetConfig

NUM_TRAIN, NUM_CLASSES, POINTS, SIDE = 24, 7, 68, 32


def _info(**overrides) -> DataInfo:
    labels = torch.arange(NUM_TRAIN) % NUM_CLASSES
    values = {"num_classes": NUM_CLASSES, "num_train": NUM_TRAIN,
              "class_counts": tuple(np.bincount(labels.numpy())), "num_landmarks": POINTS,
              "train_labels": labels, "image_size": SIDE}
    values.update(overrides)
    return DataInfo(**values)


def _method(info: DataInfo | None = None, seed: int = 0, **overrides) -> LANet:
    torch.manual_seed(seed)
    config = {"backbone": "tiny", "bank_size": 32, "score_hidden": 16, "projection_hidden": 32, "projection_dim": 16}
    config.update(overrides)
    return method_class("lanet")(LANetConfig(**config), info or _info())


def _fake_batch(gen: torch.Generator, start: int = 0, batch_size: int = 8, side: int = SIDE,
                votes: bool = False) -> dict[str, torch.Tensor]:
    """A FAKE batch of random images/landmarks; labels follow _info's noisy labels, clean = label + 1 on odd rows."""
    index = (torch.arange(batch_size) + start) % NUM_TRAIN
    label = index % NUM_CLASSES
    batch = {"image": torch.randn(batch_size, 3, side, side, generator=gen),
             "image2": torch.randn(batch_size, 3, side, side, generator=gen),
             "label": label, "clean_label": torch.where(index % 2 == 1, (label + 1) % NUM_CLASSES, label),
             "index": index, "sample_id": index + 1000,
             "landmarks": torch.rand(batch_size, POINTS, 2, generator=gen) * (side - 1)}
    if votes:
        batch["votes"] = torch.rand(batch_size, NUM_CLASSES, generator=gen)
    return batch


def _step(method: LANet, batch: dict, step: int = 0, optimizer=None) -> dict:
    info = StepInfo(epoch=0, step=step, total_steps=100, epochs=1)
    out = method.training_step(batch, info)
    if optimizer is not None:
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        method.after_optimizer_step(info)
    return out


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_gradients_reach_scorers_both_backbones_and_heads():
    method = _method()
    method.train()
    out = _step(method, _fake_batch(torch.Generator().manual_seed(0)))
    assert set(out) >= {"loss", "logits", "loss_ce", "loss_lm", "loss_kl", "loss_el"}
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    lde = method.lde
    for name, module in [("g1 (u)", lde.expression_scorer.g1), ("g2 (u)", lde.expression_scorer.g2),
                         ("f (u)", lde.expression_scorer.f), ("g1 (v)", lde.landmark_scorer.g1),
                         ("g2 (v)", lde.landmark_scorer.g2), ("f (v)", lde.landmark_scorer.f),
                         ("expression backbone", method.expression_backbone),
                         ("landmark backbone", method.landmark_branch.backbone),
                         ("landmark head", method.landmark_branch.head), ("classifier", method.classifier),
                         ("projection u", method.expression_projection), ("projection v", method.landmark_projection)]:
        assert _grad_norm(module) > 0, f"no gradient reached {name}"
    for key in (method.key_expression_backbone, method.key_landmark_branch, method.key_expression_projection):
        assert all(not p.requires_grad and p.grad is None for p in key.parameters())


def test_landmark_space_of_lde_alone_trains_the_landmark_backbone():
    method = _method(landmark_weight=0.0, el_loss=False, el_pseudo_labels=False)
    out = _step(method, _fake_batch(torch.Generator().manual_seed(1)))
    out["loss"].backward()
    assert _grad_norm(method.landmark_branch.backbone) > 0           # only through c_ij in the landmark space


def test_momentum_encoders_follow_the_query_encoders():
    method = _method()
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    key_before = [p.detach().clone() for p in method.key_expression_backbone.parameters()]
    _step(method, _fake_batch(torch.Generator().manual_seed(2)), optimizer=optimizer)
    for before, after, query in zip(key_before, method.key_expression_backbone.parameters(),
                                    method.expression_backbone.parameters()):
        torch.testing.assert_close(after, 0.999 * before + 0.001 * query.detach())
    assert int(method.bank.pointer) == 8 and method.bank.ids[:8].tolist() == list(range(8))


@pytest.mark.parametrize("pseudo", [True, False])
def test_el_groups_by_pseudo_labels_or_by_noisy_labels(pseudo):
    method = _method(el_pseudo_labels=pseudo, omega=0.5, delta=0.9)
    batch = _fake_batch(torch.Generator().manual_seed(3))
    _step(method, batch)
    targets = method.lde.targets[batch["index"]]
    if pseudo:      # 0.5 one-hot + 0.5 aggregated: rarely above 0.9, so most samples are ambiguous
        assert method.bank.labels[:8].tolist() == targets.argmax(1).tolist()
        assert method.bank.confident[:8].tolist() == (targets.max(1).values > 0.9).tolist()
    else:
        assert method.bank.labels[:8].tolist() == batch["label"].tolist()
        assert bool(method.bank.confident[:8].all())


def test_table2_ablation_presets():
    for name, switches in ABLATION_PRESETS.items():
        method = _method(**switches)
        out = _step(method, _fake_batch(torch.Generator().manual_seed(4)))
        assert torch.isfinite(out["loss"]), name
        assert ("loss_el" in out) == switches["el_loss"]
        assert (method.landmark_branch is not None) == (switches["lde_landmark_space"] or switches["el_loss"])
    assert _method(**ABLATION_PRESETS["ld"]).needs == frozenset()
    assert _method(**ABLATION_PRESETS["ld+lm"]).needs == frozenset({"landmarks"})
    assert _method().needs == frozenset({"landmarks", "two_views"})
    assert _method(info=_info(has_votes=True)).needs == frozenset({"landmarks", "two_views", "votes"})
    # LD only runs on data without landmarks
    assert _method(info=_info(num_landmarks=0), **ABLATION_PRESETS["ld"]).landmark_branch is None


def test_configuration_errors_are_clear():
    with pytest.raises(ConfigError, match="landmark_head"):
        LANetConfig(landmark_head="wing")
    with pytest.raises(ConfigError, match="need lde"):
        LANetConfig(lde=False)
    with pytest.raises(ConfigError, match="landmarks"):
        _method(info=_info(num_landmarks=0))
    with pytest.raises(ConfigError, match="train_labels"):
        _method(info=_info(train_labels=None))
    with pytest.raises(ConfigError, match="ResNet"):
        _method(landmark_head="heatmap")                              # the tiny CNN has no stages
    with pytest.raises(ConfigError, match="68-point"):
        _method(info=_info(num_landmarks=5), landmark_points="aflw19")


def test_missing_landmarks_rows_are_left_out():
    method = _method()
    batch = _fake_batch(torch.Generator().manual_seed(5))
    batch["landmarks"][:3] = float("nan")
    out = _step(method, batch)
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["loss_lm"])


def test_per_sample_state_survives_a_checkpoint_round_trip(tmp_path):
    method = _method()
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(6)
    for step in range(3):
        _step(method, _fake_batch(gen, start=8 * step), step=step, optimizer=optimizer)
    path = tmp_path / "lanet.pt"
    torch.save({"method": method.state_dict()}, path)
    restored = _method(seed=123)
    assert not torch.equal(restored.lde.targets, method.lde.targets)
    restored.load_state_dict(torch.load(path, weights_only=True)["method"])
    for name, buffer in method.named_buffers():
        torch.testing.assert_close(dict(restored.named_buffers())[name], buffer, msg=name)
    assert int(restored.bank.pointer) == int(method.bank.pointer) == (3 * 8) % 32
    assert not torch.equal(method.lde.targets, torch.nn.functional.one_hot(method.noisy_labels, NUM_CLASSES).float())
    # the next step is the same in both
    batch = _fake_batch(torch.Generator().manual_seed(7))
    torch.manual_seed(0)
    loss_a = _step(method, batch)["loss"]
    torch.manual_seed(0)
    loss_b = _step(restored, batch)["loss"]
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(restored.lde.targets, method.lde.targets)


def test_epoch_end_writes_targets_and_reports_recovery_and_votes(tmp_path):
    method = _method(info=_info(has_votes=True))
    gen = torch.Generator().manual_seed(8)
    for step in range(3):
        _step(method, _fake_batch(gen, start=8 * step, votes=True), step=step)
    metrics = method.on_epoch_end(0, tmp_path)
    assert 0.0 <= metrics["target_flipped_recovered"] <= 1.0
    assert metrics["target_flipped_share"] == pytest.approx(0.5)        # odd indices were "flipped"
    assert {"targets_votes_js_bits", "labels_votes_js_bits", "target_ambiguous_share"} <= set(metrics)
    table = read_table(targets_path(tmp_path, 0))
    assert table.column("sample_id").to_pylist() == list(range(1000, 1000 + NUM_TRAIN))
    np.testing.assert_allclose(vectors_to_numpy(table.column("distribution")), method.target_distributions().numpy())
    assert method.target_distributions().shape == (NUM_TRAIN, NUM_CLASSES)


def test_official_heatmap_head_on_resnet18():
    method = _method(backbone="resnet18", landmark_head="heatmap", projection_hidden=64)
    assert method.landmark_branch.layout == "aflw19" and method.landmark_branch.feature_dim == 64
    batch = _fake_batch(torch.Generator().manual_seed(9), batch_size=4, side=64)
    heatmaps = method.landmark_branch._forward(batch["image"])[1]
    assert heatmaps.shape == (4, 19, 16, 16)                             # stride 4
    out = _step(method, batch)
    assert torch.isfinite(out["loss"]) and out["loss_lm"] > 0
    out["loss"].backward()
    assert _grad_norm(method.landmark_branch.head) > 0 and _grad_norm(method.landmark_branch.backbone) > 0
    assert not any(k.startswith("landmark_branch.trunk.") for k in method.state_dict())


def test_epoch_end_reports_what_shapes_the_estimate_then_starts_afresh(tmp_path):
    method = _method(k=3)
    gen = torch.Generator().manual_seed(9)
    for step in range(2):
        _step(method, _fake_batch(gen, start=8 * step), step=step)
    metrics = method.on_epoch_end(0, tmp_path)
    for space in ("expression", "landmark"):
        assert 0.0 < metrics[f"lde_{space}_contribution_mean"] < 1.0
        assert 0.0 <= metrics[f"lde_{space}_contribution_row_spread"] < 1.0
        assert 0.0 <= metrics[f"lde_{space}_same_clean"] <= 1.0
    # the estimate averages softmax predictions, so its max share never exceeds theirs on average by much
    assert 1 / NUM_CLASSES <= metrics["lde_new_max_share"] <= 1.0
    assert 1 / NUM_CLASSES <= metrics["lde_prediction_max"] <= 1.0
    # after 1 EMA update from one-hot every target keeps > 0.9 on its noisy label: all confident, and the
    # fake clean label differs on odd indices, so half of the confident argmaxes are right
    assert metrics["target_ambiguous_share"] == 0.0
    assert metrics["target_confident_precision"] == pytest.approx(0.5)
    assert not any(key.startswith("lde_") for key in method.on_epoch_end(1, tmp_path))   # stats reset
