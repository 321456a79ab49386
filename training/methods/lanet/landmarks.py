"""LA-Net landmark heads and losses (L_lm).

Default (paper, sec. 3.1): a fully connected regression head on the pooled landmark features predicts
the P points as coordinates normalised by the image size (x / W, y / H), trained with mean squared error.

Option (official code): a heatmap head, Gaussian targets per point and the adaptive wing loss
(Wang, Bo and Fuxin, ICCV 2019: omega 14, theta 0.5, epsilon 1, alpha 2.1) with its weighted loss map
(weight 1 + W where the 3x3-dilated target is >= 0.2, W = 10). The official code uses the 19 AFLW points;
pipeline.contract.layouts.aflw19_from_ibug68_torch builds that 19-point layout (brows, eyes, nose, mouth, chin)
from 68 iBUG points.
The heatmap head is a small feature pyramid over the four stages of a ResNet landmark trunk at stride 4,
as in the official code.

Samples whose landmarks contain NaN or inf (a landmark backend that failed on them) are left out of L_lm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_VERSION = "1.0.0"


def valid_landmark_rows(points: torch.Tensor) -> torch.Tensor:
    """[B, P, 2] -> [B] bool: rows whose every coordinate is finite."""
    return torch.isfinite(points).flatten(1).all(dim=1)


class LandmarkRegressionHead(nn.Module):
    """Pooled landmark features [B, D] -> normalised coordinates [B, P, 2] (paper default)."""

    def __init__(self, dim: int, num_points: int):
        super().__init__()
        self.num_points = num_points
        self.fc = nn.Linear(dim, 2 * num_points)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features).view(-1, self.num_points, 2)       # [B, P, 2]


def regression_loss(predicted: torch.Tensor, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """MSE between predicted [B, P, 2] and pixel points [B, P, 2] normalised by (width, height)."""
    scale = points.new_tensor([float(width), float(height)])
    target = points / scale                                         # [B, P, 2] in ~[0, 1]
    valid = valid_landmark_rows(target)
    if not bool(valid.any()):
        return predicted.sum() * 0.0
    return F.mse_loss(predicted[valid].float(), target[valid].float())


def gaussian_heatmaps(points: torch.Tensor, image_size: tuple[int, int], heatmap_size: tuple[int, int],
                      sigma: float) -> torch.Tensor:
    """Pixel points [B, P, 2] (x, y) of an image (H, W) -> Gaussian targets [B, P, h, w], peak 1.

    Pixel centres map as (p + 0.5) * (h / H) - 0.5; sigma is in heatmap pixels. Non-finite points
    give all-zero maps.
    """
    (image_h, image_w), (map_h, map_w) = image_size, heatmap_size
    centre_x = (points[..., 0] + 0.5) * (map_w / image_w) - 0.5      # [B, P]
    centre_y = (points[..., 1] + 0.5) * (map_h / image_h) - 0.5      # [B, P]
    xs = torch.arange(map_w, device=points.device, dtype=torch.float32)   # [w]
    ys = torch.arange(map_h, device=points.device, dtype=torch.float32)   # [h]
    dx2 = (xs.view(1, 1, 1, -1) - centre_x.unsqueeze(-1).unsqueeze(-1).float()) ** 2   # [B, P, 1, w]
    dy2 = (ys.view(1, 1, -1, 1) - centre_y.unsqueeze(-1).unsqueeze(-1).float()) ** 2   # [B, P, h, 1]
    maps = torch.exp(-(dx2 + dy2) / (2.0 * sigma ** 2))            # [B, P, h, w]
    return torch.nan_to_num(maps, nan=0.0)


def heatmap_weight_map(target: torch.Tensor, weight: float = 10.0, threshold: float = 0.2) -> torch.Tensor:
    """Adaptive wing's loss weighting: 1 + weight where the 3x3 grey-dilated target >= threshold."""
    dilated = F.max_pool2d(target, kernel_size=3, stride=1, padding=1)   # [B, P, h, w]
    return 1.0 + weight * (dilated >= threshold).float()


def adaptive_wing_loss(predicted: torch.Tensor, target: torch.Tensor, omega: float = 14.0,
                       theta: float = 0.5, epsilon: float = 1.0, alpha: float = 2.1) -> torch.Tensor:
    """Element-wise adaptive wing loss (Wang et al. 2019, eq. 7): same shape as the inputs."""
    delta = (target - predicted).abs()
    power = alpha - target                                          # exponent depends on the target pixel
    ratio = theta / epsilon
    a = omega / (1.0 + ratio ** power) * power * ratio ** (power - 1.0) / epsilon
    c = theta * a - omega * torch.log1p(ratio ** power)
    small = omega * torch.log1p((delta / epsilon) ** power)
    large = a * delta - c
    return torch.where(delta < theta, small, large)


class HeatmapHead(nn.Module):
    """Official-code option: a feature pyramid over ResNet stages (strides 4..32) -> heatmaps at stride 4.

    stage_channels: channels of stages 1..4. `forward` returns (heatmaps [B, P, H/4, W/4], pooled
    pyramid features [B, width] used as the landmark-space feature v).
    """

    def __init__(self, stage_channels: list[int], num_points: int, width: int = 64):
        super().__init__()
        self.width = width
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in stage_channels)
        self.out = nn.Conv2d(width, num_points, kernel_size=1)

    def forward(self, stages: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        merged = self.lateral[-1](stages[-1])                       # [B, width, H/32, W/32]
        for lateral, stage in zip(reversed(self.lateral[:-1]), reversed(stages[:-1])):
            merged = F.interpolate(merged, size=stage.shape[-2:], mode="bilinear", align_corners=False)
            merged = merged + lateral(stage)                        # [B, width, h_s, w_s]
        pooled = merged.mean(dim=(2, 3))                            # [B, width]
        return self.out(merged), pooled


def heatmap_loss(predicted: torch.Tensor, points: torch.Tensor, image_size: tuple[int, int],
                 sigma: float, weight: float = 10.0) -> torch.Tensor:
    """Weighted adaptive wing loss between predicted heatmaps [B, P, h, w] and Gaussian targets of points."""
    valid = valid_landmark_rows(points)
    if not bool(valid.any()):
        return predicted.sum() * 0.0
    predicted = predicted[valid].float()
    target = gaussian_heatmaps(points[valid], image_size, tuple(predicted.shape[-2:]), sigma)
    return (adaptive_wing_loss(predicted, target) * heatmap_weight_map(target, weight)).mean()


def resnet_stages(trunk: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Stage outputs [layer1..layer4] of a torchvision-style ResNet (conv1, bn1, relu, maxpool, layer1-4)."""
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(images))))   # [B, 64, H/4, W/4]
    stages = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(trunk, name)(x)
        stages.append(x)
    return stages


def has_resnet_stages(trunk: nn.Module) -> bool:
    return all(hasattr(trunk, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"))
