"""LDLVA as a Method on FAKE random batches (tiny backbone): grouped and memory neighbour sources,
the lambda SGD-with-momentum update and the centre update."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.methods import DataInfo, StepInfo, method_class
from training.methods.ldlva import LdlvaConfig
from training.samplers import group_members

N_TRAIN, K, C = 12, 3, 7


def _graph() -> tuple[torch.Tensor, torch.Tensor]:
    """A FAKE ring graph: sample i's neighbours are i+1..i+K (mod N); the last slot of sample 0 is -1."""
    nbr = (np.arange(N_TRAIN)[:, None] + np.arange(1, K + 1)[None, :]) % N_TRAIN
    sim = np.linspace(0.9, 0.5, K)[None, :].repeat(N_TRAIN, 0).astype(np.float32)
    nbr[0, -1], sim[0, -1] = -1, 0.0
    return torch.as_tensor(nbr), torch.as_tensor(sim)


def _method(name: str = "ldlva", **overrides):
    torch.manual_seed(0)
    labels = torch.arange(N_TRAIN) % C
    info = DataInfo(num_classes=C, num_train=N_TRAIN, class_counts=tuple(np.bincount(labels, minlength=C)),
                    train_labels=labels, graphs={"va": _graph()}, has_va=True)
    return method_class(name)(LdlvaConfig(backbone="tiny", calibration_hidden=(16, 8), **overrides), info)


def _grouped_batch(gen: torch.Generator, centres: np.ndarray) -> dict[str, torch.Tensor]:
    nbr, sim = (t.numpy() for t in _graph())
    idx, group, role, weight = group_members(centres, [(1, nbr, sim, K)])
    n = len(idx)
    return {"image": torch.randn(n, 3, 32, 32, generator=gen), "label": torch.as_tensor(idx % C),
            "index": torch.as_tensor(idx), "group": torch.as_tensor(group), "role": torch.as_tensor(role),
            "weight": torch.as_tensor(weight)}


def _run_steps(method, batches):
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    method.train()
    outs = []
    for step, batch in enumerate(batches):
        info = StepInfo(epoch=0, step=step, total_steps=len(batches), epochs=1)
        out = method.training_step(batch, info)
        assert torch.isfinite(out["loss"])
        optimizer.zero_grad()
        out["loss"].backward()
        pending = dict(method._pending)
        optimizer.step()
        method.after_optimizer_step(info)
        outs.append((out, pending))
    return outs


def test_grouped_batches_train_and_lambda_sgd_momentum():
    method = _method(lambda_init_logit=0.8, lambda_momentum=0.9)   # the authors' AffectNet setting
    assert method.needs == frozenset({"groups"})
    gen = torch.Generator().manual_seed(0)
    batches = [_grouped_batch(gen, np.array([0, 5, 7])), _grouped_batch(gen, np.array([1, 2, 3]))]
    (out1, pend1), (_, pend2) = _run_steps(method, batches)
    assert out1["logits"].shape == (3, C)   # only centres get the classification loss
    assert all(p.grad is not None for p in method.calibration.parameters())
    g1 = torch.zeros(N_TRAIN).index_add(0, pend1["index"], pend1["lam_grad"])
    g2 = torch.zeros(N_TRAIN).index_add(0, pend2["index"], pend2["lam_grad"])
    v2 = 0.9 * g1 + g2
    expected = 0.8 - 10.0 * g1 - 10.0 * v2
    torch.testing.assert_close(method.lambda_logit, expected)
    assert (method.lambda_logit[[4, 6, 8]] == 0.8).all()       # never a centre: untouched
    assert (method.targets[[0, 5, 7, 1, 2, 3]].sum(1) - 1).abs().max() < 1e-5
    assert method.centres.abs().sum() > 0


def test_memory_source_reads_neighbours_after_they_are_seen():
    method = _method("ldlva_memory", num_neighbors=K)
    assert method.needs == frozenset()
    gen = torch.Generator().manual_seed(0)

    def batch(idx):
        idx = torch.as_tensor(idx)
        return {"image": torch.randn(len(idx), 3, 32, 32, generator=gen), "label": idx % C, "index": idx}

    (out1, pend1), (_, pend2) = _run_steps(method, [batch([0, 1, 2, 3]), batch([4, 5, 6, 7, 8, 9, 10, 11])])
    # step 1: nothing in memory yet -> target is the one-hot label; neighbours agree trivially
    assert out1["neighbor_agreement"] == 1.0
    torch.testing.assert_close(pend1["target"], torch.nn.functional.one_hot(torch.arange(4) % C, C).float())
    assert method.memory_seen.all()
    torch.testing.assert_close(method.memory_probs[[4, 5]], pend2["probs"][[0, 1]])
    (_, pend3), = _run_steps(method, [batch([0, 6])])
    assert not torch.allclose(pend3["target"], torch.nn.functional.one_hot(torch.tensor([0, 6]) % C, C).float())


def test_memory_source_needs_the_graph():
    with pytest.raises(ConfigError, match="graph_space"):
        _method("ldlva_memory", graph_space="au")


def test_memory_source_with_a_single_seen_neighbour_pair():
    method = _method("ldlva_memory", num_neighbors=K)
    gen = torch.Generator().manual_seed(0)

    def batch(idx):
        idx = torch.as_tensor(idx)
        return {"image": torch.randn(len(idx), 3, 32, 32, generator=gen), "label": idx % C, "index": idx}

    # after [1, 5] are seen, sample 0's neighbours (1, 2, -1) give one usable pair, 8's (9, 10, 11) none
    _run_steps(method, [batch([1, 5])])
    (out, _), = _run_steps(method, [batch([0, 8])])
    assert torch.isfinite(out["loss"]) and out["calibration_mean"] == 1.0
