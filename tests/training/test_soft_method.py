"""SOFT as a Method: a few optimiser steps on a FAKE random batch (tiny backbone), teacher EMA, branches."""
from __future__ import annotations

import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.methods import DataInfo, StepInfo, method_class
from training.methods.soft import SoftConfig, SoftMethod


def _fake_batch(gen: torch.Generator, batch_size: int = 8, num_classes: int = 7) -> dict[str, torch.Tensor]:
    """A FAKE batch of random images and labels, only to drive the method's code paths."""
    return {"image": torch.randn(batch_size, 3, 32, 32, generator=gen),
            "image2": torch.randn(batch_size, 3, 32, 32, generator=gen),
            "label": torch.randint(0, num_classes, (batch_size,), generator=gen),
            "index": torch.arange(batch_size)}


def _method(**overrides) -> SoftMethod:
    torch.manual_seed(0)
    info = DataInfo(num_classes=7, num_train=8, class_counts=(2, 1, 1, 1, 1, 1, 1))
    return method_class("soft")(SoftConfig(backbone="tiny", **overrides), info)


def test_soft_trains_and_teacher_follows_student_by_ema():
    method = _method(warmup_epochs=1)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    teacher_params = {id(p) for p in method.teacher.parameters()}
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert not teacher_params & {id(p) for p in optimizer.param_groups[0]["params"]}
    gen = torch.Generator().manual_seed(1)
    method.train()
    for step in range(4):
        info = StepInfo(epoch=step // 2, step=step, total_steps=4, epochs=2)
        before_t = [p.detach().clone() for p in method.teacher.parameters()]
        out = method.training_step(_fake_batch(gen), info)
        assert torch.isfinite(out["loss"]) and out["logits"].shape == (8, 7)
        optimizer.zero_grad()
        out["loss"].backward()
        if step < 2:   # warm-up: the uncertainty module gets no gradient
            assert all(p.grad is None for p in method.uncertainty.parameters())
        else:
            assert all(p.grad is not None for p in method.uncertainty.parameters())
        optimizer.step()
        method.after_optimizer_step(info)
        decay = min(1 - 1 / (step + 2), 0.999)
        for t_before, t_after, s in zip(before_t, method.teacher.parameters(), method.student.parameters()):
            torch.testing.assert_close(t_after, decay * t_before + (1 - decay) * s.detach())


def test_soft_predict_branches_and_saved_choice():
    method = _method(teacher_view="same")
    method.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        student = method.predict(images, which="student")
        teacher = method.predict(images, which="teacher")
        assert torch.equal(method.predict(images), student)      # default branch: student
        method.set_eval_branch("teacher")
        assert torch.equal(method.predict(images), teacher)
    state = method.state_dict()
    assert int(state["eval_branch_index"]) == 1
    fresh = _method(teacher_view="same")
    fresh.load_state_dict(state)
    assert fresh.eval_branch == "teacher"
    with pytest.raises(ConfigError):
        method.set_eval_branch("both")
