"""Backbones: torchvision ResNet-18/50 (random init, no downloads), a small CIFAR-style ResNet for CPU
benchmarks (`resnet_small`) and a tiny CNN for CPU tests.

`build_backbone(name, weights_path)` returns (module mapping [B, 3, H, W] -> [B, D] features, D). Initial
weights (e.g. an MS-Celeb-1M ResNet checkpoint, or one written by `python -m training.pretrain`) load from a
file with `weights_only=True`. The layouts such checkpoints come in are accepted: a plain state_dict, one
under `state_dict` (or `model_state_dict`, `model`, `net`, `backbone`), keys prefixed `module.` (DataParallel,
DDP) or another wrapper prefix; a classifier head of any size (`fc.`, `classifier.`, ...) is dropped with a
logged line, since the method builds its own. Missing, unexpected and shape-mismatched keys are reported
(logged, and kept on the module as `load_report`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline.contract.errors import ConfigError, choices_message

log = logging.getLogger(__name__)

# Small CIFAR-style ResNets (SmallResNet): name -> width of the first stage (then x2, x4, x8).
SMALL_RESNETS = {"resnet_small": 16, "resnet_small_w32": 32}
BACKBONES = ("resnet18", "resnet50", *SMALL_RESNETS, "tiny")
# Wrapper prefixes stripped (repeatedly) from checkpoint keys: DataParallel/DDP, common model wrappers.
STRIP_PREFIXES = ("module.", "backbone.", "features.", "encoder.", "model.", "base.", "net.", "_orig_mod.")
# Keys of classifier heads that are not part of a feature backbone.
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "logits.")


@dataclass
class LoadReport:
    """What loading initial weights did."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)   # "key: checkpoint shape vs model shape"
    dropped_head: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.path}: loaded {len(self.loaded)} tensors; missing {len(self.missing)} "
                f"{self.missing[:5]}; unexpected {len(self.unexpected)} {self.unexpected[:5]}; "
                f"shape-mismatched {len(self.mismatched)} {self.mismatched[:3]}; "
                f"dropped head keys {len(self.dropped_head)}")


class TinyBackbone(nn.Module):
    """Three strided conv-BN-ReLU blocks and global average pooling: [B, 3, H, W] -> [B, 64]."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.body = nn.Sequential(*layers)
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))  # [B, D]


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet for 32-112 px inputs on a CPU: [B, 3, H, W] -> [B, 8 * width].

    3x3 stem without max-pool (small inputs keep their resolution), four stages of torchvision
    BasicBlocks at widths (w, 2w, 4w, 8w) with strides (1, 2, 2, 2), global average pooling. One block
    per stage is enough capacity to memorise a few thousand noisy labels, the regime where label-noise
    methods have something to correct (`resnet_small`: width 16, 0.3M parameters; `resnet_small_w32`:
    width 32, 1.2M).
    """

    def __init__(self, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1, 1)):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, channels = [], width
        for index, count in enumerate(blocks):
            out, stride = width * 2 ** index, 1 if index == 0 else 2
            layers = []
            for b in range(count):
                down = None
                if b == 0 and (stride != 1 or channels != out):
                    down = nn.Sequential(nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                layers.append(BasicBlock(channels, out, stride if b == 0 else 1, down))
                channels = out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.out_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))  # [B, 3, H, W] -> [B, D]


def _resnet(name: str) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()  # the module now returns pooled [B, D] features
    return net, dim


def remap_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip wrapper prefixes; split off classifier-head keys. Returns (backbone keys, dropped head keys)."""
    out, dropped = {}, []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
        if name.startswith(HEAD_PREFIXES):
            dropped.append(key)
            continue
        out[name] = value
    return out, dropped


def _unwrap_checkpoint(obj) -> dict:
    """Find the state dict inside common checkpoint layouts ({'state_dict': ...}, {'model': ...}, ...)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "backbone"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        return obj
    raise ConfigError(f"checkpoint holds a {type(obj).__name__}, not a state dict")


def load_backbone_weights(module: nn.Module, path: str | Path) -> LoadReport:
    """Load matching tensors from a checkpoint into `module` (non-strict), reporting what did not match."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"backbone weights not found: {path}; give an existing file with --set model.weights=PATH "
                          "(no weights are downloaded)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot load backbone weights {path} with weights_only=True: {exc}") from exc
    raw_state = _unwrap_checkpoint(raw)
    state, dropped = remap_state_dict(raw_state)
    own = module.state_dict()
    report = LoadReport(str(path), dropped_head=dropped)
    if dropped:
        shapes = ", ".join(f"{key} {tuple(raw_state[key].shape)}" for key in dropped)
        log.info("backbone weights %s: classifier dropped (%s); the method builds its own for this run's classes",
                 path, shapes)
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    module.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    log.info("backbone weights %s", report.summary())
    if not usable:
        raise ConfigError(f"no tensor of {path} matches the backbone: {report.summary()}")
    return report


def build_backbone(name: str, weights_path: str | Path | None = None) -> tuple[nn.Module, int]:
    """A feature extractor ([B, 3, H, W] -> [B, D]) and its feature size D."""
    if name == "tiny":
        module: nn.Module = TinyBackbone()
        dim = module.out_dim
    elif name in SMALL_RESNETS:
        module = SmallResNet(SMALL_RESNETS[name])
        dim = module.out_dim
    elif name in ("resnet18", "resnet50"):
        module, dim = _resnet(name)
    else:
        raise ConfigError(choices_message("backbone", name, BACKBONES))
    module.load_report = load_backbone_weights(module, weights_path) if weights_path else None
    return module, dim
