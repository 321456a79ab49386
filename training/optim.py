"""Optimisers (Adam, AdamW, SGD over the method's parameter groups) and step-based lr schedules."""
from __future__ import annotations

import math

import torch

from training.config import TrainConfig


def build_optimizer(method, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    o = config.optim
    groups = []
    for group in method.param_groups():
        group = dict(group)
        group["lr"] = o.lr * float(group.pop("lr_scale", 1.0))
        group.setdefault("weight_decay", o.weight_decay)
        groups.append(group)
    extra = {"fused": True} if device.type == "cuda" and o.name in ("adam", "adamw") else {}
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), **extra)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), **extra)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def lr_factor(step: int, total: int, warmup: int, name: str, min_ratio: float,
              milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base lr at `step`: linear warm-up, then linear decay / cosine / constant / step.

    step: x gamma once for every milestone (in optimiser steps) already reached.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "step":
        return gamma ** sum(step >= m for m in milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int, total: int):
    warmup = round(config.schedule.warmup_epochs * steps_per_epoch)
    s = config.schedule
    milestones = tuple(round(float(m) * steps_per_epoch) for m in s.milestones)  # epochs -> optimiser steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, s.name, s.min_lr_ratio, milestones, s.gamma))
