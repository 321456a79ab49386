"""HRNetV2-W18 for facial landmarks (Wang et al., "Deep High-Resolution Representation Learning", TPAMI 2020).

Written here in PyTorch; parameter names and shapes follow the public HRNet facial-landmark checkpoints
(HR18-AFLW 19 points, HR18-300W 68, HR18-WFLW 98, HR18-COFW 29), so their state dicts load unchanged:
stem conv1/bn1/conv2/bn2 (64 channels, two stride-2 3x3 convs), layer1 = 4 bottlenecks (64 -> 256),
transition1..3, stage2 (1 module, 2 branches), stage3 (4 modules, 3 branches), stage4 (3 modules, 4
branches) of 4 basic blocks per branch with widths 18/36/72/144, all branches upsampled bilinearly to 1/4
resolution and concatenated (270 channels), head = 1x1 conv 270->270 (bias) + BN + ReLU + 1x1 conv 270->P.
Input 256x256 RGB normalised with ImageNet mean/std; output heatmaps [B, P, 64, 64].

Decoding (`decode_heatmaps`) takes the argmax and moves it a quarter pixel toward the higher neighbour on
each axis, as the official evaluation does; heatmap cell i covers input pixels [4i, 4i + 4), so its centre
is 4i + 1.5 in pixel-index coordinates.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.contract.errors import BackendMissingError, ConfigError

log = logging.getLogger(__name__)

STAGE_VERSION = "1.0.0"
BN_MOMENTUM = 0.01
INPUT_SIZE = 256
HEATMAP_SIZE = 64
W18_WIDTHS = (18, 36, 72, 144)
STAGE_MODULES = {"stage2": 1, "stage3": 4, "stage4": 3}
BLOCKS_PER_BRANCH = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KNOWN_POINT_COUNTS = {19: "AFLW", 29: "COFW", 68: "300W", 98: "WFLW"}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), _bn(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (channels unchanged in HRNet branches)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = _bn(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) residual block of layer1; `downsample` projects the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _bn(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if inplanes == out else nn.Sequential(nn.Conv2d(inplanes, out, 1, bias=False),
                                                                       _bn(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every output resolution sums all branches (fuse_layers)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(w) for _ in range(BLOCKS_PER_BRANCH)]) for w in widths)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse(widths, src, dst) for src in range(len(widths))) for dst in range(len(widths)))
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _fuse(widths: tuple[int, ...], src: int, dst: int) -> nn.Module | None:
        """Map branch `src` to branch `dst`: 1x1 conv (then upsample) or a chain of stride-2 3x3 convs."""
        if src == dst:
            return None
        if src > dst:
            return nn.Sequential(nn.Conv2d(widths[src], widths[dst], 1, 1, 0, bias=False), _bn(widths[dst]))
        steps = dst - src
        chain = [_conv_bn(widths[src], widths[src], 3, 2, relu=True) for _ in range(steps - 1)]
        chain.append(_conv_bn(widths[src], widths[dst], 3, 2, relu=False))
        return nn.Sequential(*chain)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for dst, layers in enumerate(self.fuse_layers):
            height, width = xs[dst].shape[-2:]
            total = xs[dst]
            for src, layer in enumerate(layers):
                if src == dst:
                    continue
                y = layer(xs[src])
                if src > dst:
                    y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)
                total = total + y
            fused.append(self.relu(total))
        return fused


def _transition(previous: tuple[int, ...], current: tuple[int, ...]) -> nn.ModuleList:
    """Adapt branch widths between stages; a new branch is a stride-2 3x3 conv from the lowest resolution."""
    layers: list[nn.Module | None] = []
    for i, width in enumerate(current):
        if i < len(previous):
            layers.append(None if previous[i] == width else _conv_bn(previous[i], width, 3, 1, relu=True))
        else:
            layers.append(nn.Sequential(_conv_bn(previous[-1], width, 3, 2, relu=True)))
    return nn.ModuleList(layers)


class HRNetW18(nn.Module):
    """HRNetV2-W18 landmark network: [B, 3, 256, 256] normalised RGB -> [B, P, 64, 64] heatmaps."""

    def __init__(self, num_points: int = 68) -> None:
        super().__init__()
        self.num_points = num_points
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Bottleneck(64, 64), *[Bottleneck(256, 64) for _ in range(3)])
        w = W18_WIDTHS
        self.transition1 = _transition((256,), w[:2])
        self.stage2 = nn.Sequential(*[HighResolutionModule(w[:2]) for _ in range(STAGE_MODULES["stage2"])])
        self.transition2 = _transition(w[:2], w[:3])
        self.stage3 = nn.Sequential(*[HighResolutionModule(w[:3]) for _ in range(STAGE_MODULES["stage3"])])
        self.transition3 = _transition(w[:3], w)
        self.stage4 = nn.Sequential(*[HighResolutionModule(w) for _ in range(STAGE_MODULES["stage4"])])
        fused = sum(w)  # 270
        self.head = nn.Sequential(
            nn.Conv2d(fused, fused, 1, 1, 0), _bn(fused), nn.ReLU(inplace=True), nn.Conv2d(fused, num_points, 1, 1, 0))

    @staticmethod
    def _apply_transition(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(transition):
            source = xs[i] if i < len(xs) else xs[-1]
            out.append(source if layer is None else layer(source))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))                  # [B, 64, H/2, W/2]
        x = self.relu(self.bn2(self.conv2(x)))                  # [B, 64, H/4, W/4]
        x = self.layer1(x)                                      # [B, 256, H/4, W/4]
        xs = self._apply_transition(self.transition1, [x])      # 2 branches
        for module in self.stage2:
            xs = module(xs)
        xs = self._apply_transition(self.transition2, xs)       # 3 branches
        for module in self.stage3:
            xs = module(xs)
        xs = self._apply_transition(self.transition3, xs)       # 4 branches
        for module in self.stage4:
            xs = module(xs)
        height, width = xs[0].shape[-2:]
        upsampled = [xs[0]] + [F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)
                               for y in xs[1:]]
        return self.head(torch.cat(upsampled, dim=1))           # [B, P, H/4, W/4]


def clean_state_dict(raw: dict) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict': ...} training checkpoints and strip DataParallel's 'module.' prefix."""
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict):
        raise ConfigError(f"the HRNet checkpoint (LandmarkConfig.hrnet_checkpoint) holds a {type(state).__name__}, "
                          "expected a state dict")
    return {(k.removeprefix("module.")): v for k, v in state.items()}


def load_hrnet(path: str | Path, map_location: str = "cpu", key: str = "LandmarkConfig.hrnet_checkpoint") -> HRNetW18:
    """Build HRNetV2-W18 with as many points as the checkpoint's head has, load it (weights_only) and eval().

    Every failure names the config key and the file: BackendMissingError when the file is absent,
    ConfigError when it cannot be read as a torch checkpoint or does not match HRNetV2-W18.
    """
    path = Path(path)
    if not path.is_file():
        raise BackendMissingError(f"HRNet checkpoint not found at {path}; set {key} to a "
                                  "HRNet facial-landmark .pth (HR18-AFLW / HR18-300W / HR18-WFLW / HR18-COFW)")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{key} {str(path)!r} cannot be read as a torch checkpoint: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    state = clean_state_dict(raw)
    head = state.get("head.3.weight")
    if head is None:
        raise ConfigError(f"{key} {str(path)!r} is not an HRNet facial-landmark checkpoint: no 'head.3.weight' key")
    model = HRNetW18(num_points=int(head.shape[0]))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:        # shape mismatches (another width, another head)
        raise ConfigError(f"{key} {str(path)!r} does not match HRNetV2-W18: {str(exc)[:400]}") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ConfigError(f"{key} {str(path)!r} does not match HRNetV2-W18: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    if model.num_points not in KNOWN_POINT_COUNTS:
        log.warning("HRNet checkpoint %s predicts %d points, not a known layout %s",
                    path, model.num_points, sorted(KNOWN_POINT_COUNTS))
    return model.eval()


def decode_heatmaps(heatmaps: torch.Tensor, input_size: int = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, P, h, w] heatmaps -> ([B, P, 2] x, y in input pixel-index coordinates, [B, P] peak values).

    argmax, then a quarter-cell step toward the higher neighbour on each axis (official HRNet decoding),
    then cell -> pixel: x = (cell + 0.5) * input_size / w - 0.5.
    """
    batch, points, height, width = heatmaps.shape
    maps = heatmaps.float()
    peak, flat = maps.reshape(batch, points, -1).max(dim=-1)          # [B, P]
    ys = torch.div(flat, width, rounding_mode="floor")                 # [B, P]
    xs = flat - ys * width                                             # [B, P]
    padded = F.pad(maps, (1, 1, 1, 1), mode="replicate")              # [B, P, h+2, w+2]
    b = torch.arange(batch, device=maps.device)[:, None]
    p = torch.arange(points, device=maps.device)[None, :]
    dx = padded[b, p, ys + 1, xs + 2] - padded[b, p, ys + 1, xs]       # [B, P]
    dy = padded[b, p, ys + 2, xs + 1] - padded[b, p, ys, xs + 1]       # [B, P]
    cells = torch.stack([xs.float() + 0.25 * torch.sign(dx), ys.float() + 0.25 * torch.sign(dy)], dim=-1)
    scale = torch.tensor([input_size / width, input_size / height], device=maps.device)
    return (cells + 0.5) * scale - 0.5, peak                           # [B, P, 2], [B, P]


def preprocess(crops: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """[B, S, S, 3] uint8 (array, or tensor already on the device) -> [B, 3, 256, 256] float, ImageNet-normalised."""
    if isinstance(crops, np.ndarray):
        crops = torch.from_numpy(np.ascontiguousarray(crops)).to(device)
    x = crops.permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != INPUT_SIZE or x.shape[-2] != INPUT_SIZE:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def predict(model: HRNetW18, crops: np.ndarray, device: str = "cpu", batch_size: int = 64,
            compile: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """[B, S, S, 3] uint8 crops -> ([B, P, 2] float32 points in crop pixels, [B] mean peak score).

    On CUDA: bf16, channels_last, torch.compile with CUDA graphs (pipeline.models.hrnet_infer), batch size
    from free memory when `batch_size` is 0; on CPU: fp32 eager unless `compile` is "yes".
    """
    from pipeline.models.hrnet_infer import HRNetRunner

    runner = HRNetRunner.for_model(model, device, compile=compile, batch_size=batch_size)
    return runner.predict(crops)
