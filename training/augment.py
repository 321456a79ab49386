"""Batch augmentations that keep landmarks consistent with the image.

Split in two so the data path stays cheap: `sample_params` draws every random choice of a batch from a
seed (so a resumed run sees the same augmentations); `crop_flip` runs in loader workers on uint8 rows of
the crop store (a slice and a reversed view: no float work) and moves the landmarks with them;
`finish_images` runs on the training device (GPU when there is one) and does the float work: scale to
[0, 1], colour jitter (brightness, contrast, saturation in that order), ImageNet normalisation and
random erasing (value 0 after normalisation, as torchvision's RandomErasing default).

Flipping a W-pixel-wide image maps x to (W - 1) - x (pixel centres at integer coordinates) and swaps
left/right landmark indices through FLIP_MAPS (iBUG 68, AFLW 19, WFLW 98 point layouts).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _flip_map(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    perm = np.arange(n)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


_PAIRS_68 = ([(i, 16 - i) for i in range(8)]                                   # jaw
             + [(17 + i, 26 - i) for i in range(5)]                            # eyebrows
             + [(31, 35), (32, 34)]                                            # nose base
             + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]    # eyes
             + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]              # outer lips
             + [(60, 64), (61, 63), (65, 67)])                                 # inner lips
_PAIRS_19 = [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)]   # AFLW-19
_PAIRS_98 = ([(i, 32 - i) for i in range(16)]                                  # contour
             + [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47)]
             + [(55, 59), (56, 58)]
             + [(60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73)]
             + [(76, 82), (77, 81), (78, 80), (87, 83), (86, 84), (88, 92), (89, 91), (95, 93), (96, 97)])

# point count -> permutation to apply after a horizontal flip (flipped[k] = original[map[k]])
FLIP_MAPS: dict[int, np.ndarray] = {68: _flip_map(68, _PAIRS_68), 19: _flip_map(19, _PAIRS_19),
                                    98: _flip_map(98, _PAIRS_98)}


def flip_map(num_points: int) -> np.ndarray:
    """Left/right index permutation of a known layout; other point counts cannot be flipped consistently."""
    if num_points not in FLIP_MAPS:
        from pipeline.contract.errors import ConfigError
        raise ConfigError(f"no flip map for {num_points}-point landmarks (known: 19, 68, 98); "
                          "set data.flip=false to train without horizontal flips")
    return FLIP_MAPS[num_points]


@dataclass(frozen=True)
class AugmentConfig:
    image_size: int              # output side
    train: bool = True           # False: centre crop, nothing random
    random_crop: bool = True
    flip: bool = True
    color_jitter: float = 0.4
    erasing_p: float = 0.5
    erasing_scale: tuple = (0.02, 0.25)
    erasing_ratio: tuple = (0.3, 3.3)


def sample_params(config: AugmentConfig, batch: int, source: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every random choice of one batch: crop offsets, flips, jitter factors, erasing boxes."""
    size, room = config.image_size, source - config.image_size
    if room < 0:
        from pipeline.contract.errors import ConfigError
        raise ConfigError(f"data.image_size {size} is larger than the stored/resized crop ({source}); "
                          f"use image_size <= {source} or set data.resize")
    offsets = np.full((batch, 2), room // 2, np.int64)  # [B, 2] (x, y)
    flips = np.zeros(batch, bool)
    jitter = np.ones((batch, 3), np.float32)             # brightness, contrast, saturation factors
    erase = np.zeros((batch, 4), np.int64)               # x0, y0, x1, y1 (empty when x0 == x1)
    if config.train:
        if config.random_crop:
            offsets = rng.integers(0, room + 1, size=(batch, 2))
        if config.flip:
            flips = rng.random(batch) < 0.5
        if config.color_jitter > 0:
            j = config.color_jitter
            jitter = rng.uniform(max(0.0, 1 - j), 1 + j, size=(batch, 3)).astype(np.float32)
        if config.erasing_p > 0:
            erase = _erasing_boxes(config, batch, rng)
    return {"offsets": offsets, "flips": flips, "jitter": jitter, "erase": erase}


def _erasing_boxes(config: AugmentConfig, batch: int, rng: np.random.Generator) -> np.ndarray:
    size = config.image_size
    area = rng.uniform(*config.erasing_scale, size=batch) * size * size  # [B]
    log_ratio = rng.uniform(np.log(config.erasing_ratio[0]), np.log(config.erasing_ratio[1]), size=batch)
    h = np.clip(np.round(np.sqrt(area * np.exp(log_ratio))), 1, size).astype(np.int64)
    w = np.clip(np.round(np.sqrt(area / np.exp(log_ratio))), 1, size).astype(np.int64)
    y0 = (rng.random(batch) * (size - h + 1)).astype(np.int64)
    x0 = (rng.random(batch) * (size - w + 1)).astype(np.int64)
    on = rng.random(batch) < config.erasing_p
    return np.where(on[:, None], np.stack([x0, y0, x0 + w, y0 + h], 1), 0)  # [B, 4]


def crop_flip(rows: np.ndarray, offsets: np.ndarray, flips: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B, S, S, 3] -> uint8 [B, size, size, 3], each row cropped at its offset and maybe mirrored."""
    out = np.empty((len(rows), size, size, 3), np.uint8)
    for b in range(len(rows)):
        x, y = int(offsets[b, 0]), int(offsets[b, 1])
        patch = rows[b, y:y + size, x:x + size]
        out[b] = patch[:, ::-1] if flips[b] else patch
    return out


def move_landmarks(points: np.ndarray, offsets: np.ndarray, flips: np.ndarray, size: int,
                   scale: float = 1.0) -> np.ndarray:
    """[B, P, 2] crop-store pixels -> pixels of the augmented image (scale first, then crop, then flip)."""
    moved = points * scale - offsets[:, None, :].astype(np.float32)  # [B, P, 2]
    if flips.any():
        perm = flip_map(points.shape[1])
        mirrored = moved[:, perm].copy()
        mirrored[..., 0] = (size - 1) - mirrored[..., 0]
        moved = np.where(flips[:, None, None], mirrored, moved)
    return moved.astype(np.float32)


def finish_images(images_u8: torch.Tensor, jitter: torch.Tensor | None = None, erase: torch.Tensor | None = None,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, H, W, 3] (on the device) -> normalised float32 [B, 3, H, W]; jitter [B, 3], erase [B, 4] optional.

    Pass None for a disabled step (decided from the config, so no device-to-host sync is needed).
    """
    x = images_u8.permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, H, W], channels_last memory layout
    if not channels_last:
        x = x.contiguous()
    if jitter is not None:
        b, c, s = (jitter[:, k].view(-1, 1, 1, 1) for k in range(3))  # each [B, 1, 1, 1]
        x = x * b
        gray_mean = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).mean(dim=(2, 3), keepdim=True)
        x = (x - gray_mean) * c + gray_mean
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # [B, 1, H, W]
        x = ((x - gray) * s + gray).clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if erase is not None:
        h, w = x.shape[2], x.shape[3]
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        e = erase.view(-1, 4, 1, 1)
        box = (xs >= e[:, 0]) & (xs < e[:, 2]) & (ys >= e[:, 1]) & (ys < e[:, 3])  # [B, H, W]
        x = x.masked_fill(box.unsqueeze(1), 0.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
