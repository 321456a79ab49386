"""LA-Net plumbing: the landmark branch (backbone + L_lm head), backbone construction, DDP row slicing.

Backbones come from training.models.build_backbone (torchvision ResNet-18/50 or the tiny CNN).
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.contract.errors import ConfigError
from pipeline.contract.layouts import aflw19_from_ibug68_torch
from training.methods.lanet.landmarks import (
    HeatmapHead,
    LandmarkRegressionHead,
    has_resnet_stages,
    heatmap_loss,
    regression_loss,
    resnet_stages,
)


# ------------------------------------------------------------------------------------------ backbones
def build_backbone(name: str, weights_path: str | None) -> tuple[nn.Module, int]:
    """(module images [B, 3, H, W] -> features [B, D], D) from the trainer's training.models."""
    from training.models import build_backbone as build

    return build(name, weights_path=weights_path)


def find_resnet_trunk(module: nn.Module) -> nn.Module | None:
    """The module itself or its first submodule with torchvision ResNet stages (conv1 .. layer4)."""
    for candidate in module.modules():
        if has_resnet_stages(candidate):
            return candidate
    return None


def stage_channels(trunk: nn.Module) -> list[int]:
    """Output channels of layer1..layer4 of a torchvision ResNet (BasicBlock: bn2, Bottleneck: bn3)."""
    channels = []
    for i in (1, 2, 3, 4):
        last_block = getattr(trunk, f"layer{i}")[-1]
        final_norm = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
        channels.append(final_norm.num_features)
    return channels


# ------------------------------------------------------------------------------------ landmark branch
class LandmarkBranch(nn.Module):
    """Landmark backbone + head. `features` gives v [B, Dv]; `features_and_loss` also gives L_lm.

    regression (paper): v = pooled backbone features, a linear head regresses normalised coordinates (MSE).
    heatmap (official): a feature pyramid over the ResNet stages predicts Gaussian heatmaps at stride 4
    (adaptive wing loss) and v is the pooled pyramid (heatmap_width channels).
    """

    def __init__(self, config, num_points: int):
        super().__init__()
        self.kind = config.landmark_head
        self.sigma = config.heatmap_sigma
        layout = config.landmark_points
        if layout == "auto":
            layout = "aflw19" if self.kind == "heatmap" and num_points == 68 else "all"
        if layout == "aflw19" and num_points != 68:
            raise ConfigError(f"LA-Net landmark_points 'aflw19' needs 68-point landmarks, the data has {num_points}")
        self.layout = layout
        points = 19 if layout == "aflw19" else num_points
        self.backbone, dim = build_backbone(config.landmark_backbone or config.backbone,
                                                        config.landmark_backbone_weights or config.backbone_weights)
        if self.kind == "regression":
            self.head = LandmarkRegressionHead(dim, points)
            self.feature_dim = dim
            return
        if self.trunk is None:
            raise ConfigError("LA-Net landmark_head 'heatmap' needs a ResNet landmark backbone (resnet18 or "
                              f"resnet50), got {config.landmark_backbone or config.backbone!r}")
        self.head = HeatmapHead(stage_channels(self.trunk), points, width=config.heatmap_width)
        self.feature_dim = config.heatmap_width

    @property
    def trunk(self) -> nn.Module | None:
        """The ResNet inside the landmark backbone (not registered twice: looked up on use)."""
        return find_resnet_trunk(self.backbone)

    def target_points(self, points: torch.Tensor) -> torch.Tensor:
        """Batch landmarks [B, P, 2] -> the head's layout [B, P', 2]."""
        return aflw19_from_ibug68_torch(points) if self.layout == "aflw19" else points

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "regression":
            features = self.backbone(images)                        # [B, D]
            return features, self.head(features)                    # [B, D], [B, P, 2]
        heatmaps, pooled = self.head(resnet_stages(self.trunk, images))
        return pooled, heatmaps                                     # [B, width], [B, P, H/4, W/4]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(images)[0]

    def features_and_loss(self, images: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, prediction = self._forward(images)
        target = self.target_points(points.float())
        height, width = images.shape[-2:]
        if self.kind == "regression":
            return features, regression_loss(prediction, target, height, width)
        return features, heatmap_loss(prediction, target, (height, width), self.sigma)


# ------------------------------------------------------------------------------------------- DDP
def local_rows(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a gathered [world * B, ...] tensor (training.distributed.gather_cat order)."""
    from training.distributed import rank, world_size

    world = world_size()
    if world == 1:
        return tensor
    batch = tensor.shape[0] // world
    return tensor[rank() * batch:(rank() + 1) * batch]
