"""`baseline`: a backbone and a linear classifier trained with cross-entropy on the (noisy) labels."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.methods.base import DataInfo, Method, StepInfo, register_method
from training.models import build_backbone


@dataclass(frozen=True)
class BaselineConfig:
    backbone: str = "resnet18"
    backbone_weights: str | None = None   # e.g. an MS-Celeb-1M ResNet-18 checkpoint
    dropout: float = 0.0                  # before the classifier
    label_smoothing: float = 0.0


@register_method
class Baseline(Method):
    """Cross-entropy on the training labels."""

    name = "baseline"
    needs = frozenset()
    config_class = BaselineConfig

    def __init__(self, config, info: DataInfo):
        super().__init__(config, info)
        config = self.config
        self.backbone, dim = build_backbone(config.backbone, config.backbone_weights)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(dim, info.num_classes)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.backbone(images)))  # [B, C]

    def training_step(self, batch: dict[str, torch.Tensor], step: StepInfo) -> dict[str, torch.Tensor]:
        logits = self.predict(batch["image"])  # [B, C]
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.config.label_smoothing)
        return {"loss": loss, "logits": logits, "ce": loss.detach()}
