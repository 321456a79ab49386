"""The contract between the generic engine and every training method.

A method is an `nn.Module` that owns its networks (backbones, heads, teachers, memory banks) and its
per-sample state (registered buffers, so checkpoints carry them). The engine builds it by name, feeds it
batches, steps the optimiser over `method.parameters()` that require grad, and calls the hooks below.
`training_step` returns a dict with `loss` (the scalar to back-propagate), `logits` ([B, C], for
throughput/accuracy logging) and any named loss parts (detached scalars are fine), timm-style.

Batch keys (tensors on the engine's device; `needs` says which optional ones a method wants):
    image        [B, 3, H, W] float32, normalised, augmented
    label        [B] int64   the training label (the chosen noise variant's label)
    clean_label  [B] int64   the clean label (diagnostics only: a method must never train on it)
    sample_id    [B] int64   global sample id (samples.parquet)
    index        [B] int64   position in the training split, 0..N_train-1: index into per-sample state
  optional, asked for through `needs`:
    "landmarks"  -> landmarks [B, P, 2] float32, pixel coordinates of the augmented `image`
    "aus"        -> aus [B, 17] float32 AU intensities
    "va"         -> va [B, 2] float32 valence, arousal
    "votes"      -> votes [B, C] float32 annotator or true label distribution (diagnostics)
    "two_views"  -> image2 [B, 3, H, W] a second augmentation of the same images
    "groups"     -> LDL-ALSG grouped batches: group [B] int64 group index, role [B] int64 (0 centre,
                    1 AU neighbour, 2 landmark neighbour), weight [B] float32 (a_ij to its centre; 0 for centres)
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline.contract.config import build_dataclass
from pipeline.contract.errors import ConfigError
from pipeline.contract.registry import Registry


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about the training data when it is built."""

    num_classes: int
    num_train: int
    class_counts: tuple[int, ...]
    num_landmarks: int = 0
    train_labels: torch.Tensor | None = None        # [N_train] int64, noisy training labels
    graphs: dict = field(default_factory=dict)      # space -> (neighbors [N_train, K] int64, similarity [N_train, K] float32)
    # graph neighbours are positions in the training split; -1 (similarity 0) where a neighbour is not a usable
    # training sample (other split, invalid crop), usable ones first in graph order (training.data.train_graph)
    has_va: bool = False
    has_votes: bool = False
    image_size: int = 224


@dataclass(frozen=True)
class StepInfo:
    epoch: int          # 0-based
    step: int           # global optimiser step, 0-based
    total_steps: int
    epochs: int

    @property
    def progress(self) -> float:
        """Share of training done, 0..1."""
        return self.step / max(1, self.total_steps)


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Base class; subclasses set `name`, `needs`, `config_class` and implement training_step/predict."""

    name: str = "base"
    needs: frozenset[str] = frozenset()
    config_class: type | None = None

    def __init__(self, config, info: DataInfo):
        """Every method's config goes through `coerce_config` here; subclasses read `self.config`."""
        super().__init__()
        self.config = self.coerce_config(config)
        self.info = info

    @classmethod
    def coerce_config(cls, config):
        """`config_class` instance from an instance, a dict of its fields, or None (the defaults)."""
        if cls.config_class is None or isinstance(config, cls.config_class):
            return config
        if config is None:
            return cls.config_class()
        if isinstance(config, dict):
            return build_dataclass(cls.config_class, config, prefix=f"method.{cls.name}")
        raise ConfigError(f"{cls.name} config must be a {cls.config_class.__name__} or a dict, "
                          f"got {type(config).__name__}")

    @abc.abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        """One forward pass and loss on a batch: {'loss', 'logits', parts...}."""

    @abc.abstractmethod
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] used for evaluation."""

    @torch.no_grad()
    def after_optimizer_step(self, step: StepInfo) -> None:
        """Called after every optimiser step (EMA teachers, momentum encoders, queues)."""

    def on_epoch_end(self, epoch: int, out_dir: Path) -> dict[str, float]:
        """Per-epoch diagnostics; returned numbers are logged to metrics.jsonl."""
        return {}

    def target_distributions(self) -> torch.Tensor | None:
        """Per-sample estimated label distributions [N_train, C], when the method keeps them."""
        return None

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups. Default: one group with every parameter that requires grad.

        Override for per-group settings: a group may carry `lr_scale` (multiplies the run's lr) and
        `weight_decay` (replaces the run's weight decay); the schedule scales every group alike.
        """
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]


METHODS: Registry[type[Method]] = Registry("method")   # the project's one Registry: a duplicate name is refused


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method buildable by its `name` (a second class under one name: ConfigError)."""
    return METHODS.register(cls.name)(cls)


def method_names() -> list[str]:
    return sorted(METHODS.names())


def method_class(name: str) -> type[Method]:
    """The registered method class; an unknown name raises ConfigError listing the valid ones."""
    return METHODS.get(name)
