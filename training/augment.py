"""Batch augmentations on the training device, drawn per sample; landmarks move with the image.

The loader's workers only gather uint8 crop rows (training/loader.py); everything here runs as batched
tensor ops on the device the model trains on (the GPU when there is one, the same code on the CPU):
optional resize, random crop, horizontal flip, colour jitter (brightness, contrast, saturation in that
order), ImageNet normalisation, random erasing (value 0 after normalisation, as torchvision's
RandomErasing default), a second independent view (LA-Net, SOFT), and the landmarks moved with crop/flip.

Randomness: every draw is a counter-based hash of (run seed, epoch, batch number, slot in the batch,
view, draw) in exact integer arithmetic (`random_bits`), so each sample has its own stream, the draws are
the same on any device and on a resumed run (bit-exact), and nothing waits on the host. The
distributions are the ones the per-batch numpy draw before it used (crop offsets uniform over the room,
flip p 0.5, jitter factors uniform in [1 - j, 1 + j], torchvision's erasing box draw); a test compares them.

Why plain torch and not kornia.augmentation (which also draws per sample on the device): the GPU
benches must run on a bare CUDA machine with PyTorch and no network, where kornia is not installed;
kornia draws from a batch-level generator, not per-sample seeded streams, so a resumed run would need its
generator state checkpointed; and the five ops needed are a few lines each (one gather for crop+flip,
broadcast arithmetic for jitter, a mask for erasing). torchvision's v2 transforms share one draw per batch.

Flipping a W-pixel-wide image maps x to (W - 1) - x (pixel centres at integer coordinates) and swaps
left/right landmark indices through FLIP_MAPS (iBUG 68, AFLW 19, WFLW 98 point layouts).
"""
from __future__ import annotations

import math
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



    def check(self, source: int) -> None:
        """Fail at once when the output is larger than the (stored or resized) crop it is cut from."""
        if self.image_size > source:
            from pipeline.contract.errors import ConfigError
            raise ConfigError(f"data.image_size {self.image_size} is larger than the stored/resized crop ({source}); "
                              f"use image_size <= {source} or set data.resize")


@dataclass(frozen=True)
class BatchAugment:
    """What the device does to one loader batch: carried in the batch (key "augment") from worker to device."""

    config: AugmentConfig
    source: int                  # side of the crop rows after the optional resize
    resize: int = 0              # 0: rows used as stored; else resized (bilinear, antialiased) to this side first
    views: int = 1               # 2: a second, independent augmentation of the same rows (LA-Net, SOFT)
    landmark_scale: float = 1.0  # stored-crop pixels -> resized-crop pixels


# --------------------------------------------------------------------------------- per-sample random draws
_M32 = 0xFFFFFFFF
_DRAWS = 11  # crop x, crop y, flip, jitter x3, erasing area, ratio, y0, x0, on


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow (c split in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (lowbias32, C. Wellons) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def augment_key(seed: int, epoch: int, number: int) -> torch.Tensor:
    """int64 [4] naming one batch of a run: (seed low, seed high, epoch, batch number); built by the loader."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return torch.tensor([seed & _M32, seed >> 32, int(epoch) & _M32, int(number) & _M32], dtype=torch.int64)


def random_bits(key: torch.Tensor, batch: int, view: int) -> torch.Tensor:
    """int64 [B, _DRAWS] of 24 random bits each: a hash of (key, slot in the batch, view, draw).

    Every sample slot gets its own counter-based stream, so the draws are the same on any device, in any
    batch split, and on a resumed run; no host synchronisation (the key may live on the device).
    """
    h = key.to(torch.int64)  # [4]
    state = _mix32((h[0] + 0x9E3779B9) & _M32)
    for k in range(1, 4):
        state = _mix32(((state ^ h[k]) + 0x9E3779B9) & _M32)  # scalar tensor
    slot = torch.arange(batch, device=key.device, dtype=torch.int64).view(-1, 1)  # [B, 1]
    draw = torch.arange(_DRAWS, device=key.device, dtype=torch.int64).view(1, -1) + 64 * view  # [1, D]
    x = _mix32(((state ^ slot) + 0x9E3779B9) & _M32)  # [B, 1]
    x = _mix32(((x ^ draw) + 0x7F4A7C15) & _M32)  # [B, D]
    return x >> 8  # [B, D] in [0, 2^24)


def _below(bits: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """Integers uniform in [0, n) from 24 random bits (exact integer arithmetic)."""
    return (bits * n) >> 24


def _unit(bits: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    return bits.to(dtype) * (1.0 / (1 << 24))  # [0, 1)


def draw_params(config: AugmentConfig, key: torch.Tensor, batch: int, source: int, view: int = 0) -> dict:
    """Every random choice of one view of a batch, per sample, on key's device.

    offsets [B, 2] int64 (x, y), uniform in 0..source - size (centre when not training or not random_crop);
    flips [B] bool (p 0.5); jitter [B, 3] float32 brightness/contrast/saturation factors uniform in
    [max(0, 1 - j), 1 + j] or None; erase [B, 4] int64 (x0, y0, x1, y1) or None: with probability erasing_p
    a box of area uniform in erasing_scale (share of the image), log aspect ratio uniform in erasing_ratio,
    placed uniformly (torchvision's RandomErasing draw). The same distributions as the per-batch numpy
    draw this replaced (tests/training/test_training_augment.py compares them).
    """
    size = config.image_size
    config.check(source)
    room = source - size
    device = key.device
    offsets = torch.full((batch, 2), room // 2, dtype=torch.int64, device=device)  # [B, 2]
    flips = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    out = {"offsets": offsets, "flips": flips, "jitter": None, "erase": None}
    if not config.train:
        return out
    bits = random_bits(key, batch, view)  # [B, D]
    if config.random_crop:
        out["offsets"] = _below(bits[:, 0:2], room + 1)  # [B, 2]
    if config.flip:
        out["flips"] = bits[:, 2] < (1 << 23)  # [B]
    if config.color_jitter > 0:
        lo, hi = max(0.0, 1 - config.color_jitter), 1 + config.color_jitter
        out["jitter"] = (lo + _unit(bits[:, 3:6]) * (hi - lo)).to(torch.float32)  # [B, 3]
    if config.erasing_p > 0:
        out["erase"] = _erasing_boxes(config, bits[:, 6:11])  # [B, 4]
    return out


def _erasing_boxes(config: AugmentConfig, bits: torch.Tensor) -> torch.Tensor:
    """[B, 4] int64 erasing boxes from [B, 5] random bits (area, log ratio, y0, x0, on)."""
    size = config.image_size
    (s0, s1), (r0, r1) = config.erasing_scale, config.erasing_ratio
    area = (s0 + _unit(bits[:, 0]) * (s1 - s0)) * size * size  # [B] float64
    log_ratio = math.log(r0) + _unit(bits[:, 1]) * (math.log(r1) - math.log(r0))  # [B]
    h = torch.sqrt(area * torch.exp(log_ratio)).round().clamp(1, size).to(torch.int64)  # [B]
    w = torch.sqrt(area / torch.exp(log_ratio)).round().clamp(1, size).to(torch.int64)  # [B]
    y0 = _below(bits[:, 2], size - h + 1)  # [B]
    x0 = _below(bits[:, 3], size - w + 1)  # [B]
    on = _unit(bits[:, 4]) < config.erasing_p  # [B]
    box = torch.stack([x0, y0, x0 + w, y0 + h], 1)  # [B, 4]
    return torch.where(on[:, None], box, torch.zeros_like(box))


# ------------------------------------------------------------------------------------ batched tensor ops
def resize_rows(rows: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> uint8 [B, side, side, 3], bilinear with antialiasing, rounded."""
    x = rows.permute(0, 3, 1, 2).float()  # [B, 3, S, S]
    x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # [B, side, side, 3]


def crop_flip(rows: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> uint8 [B, size, size, 3]: each row cropped at its offset, mirrored where flipped.

    One gather for the whole batch (no per-sample loop), on the rows' device.
    """
    b = rows.shape[0]
    steps = torch.arange(size, device=rows.device)  # [s]
    ys = offsets[:, 1:2] + steps  # [B, s]
    xs = offsets[:, 0:1] + torch.where(flips[:, None], size - 1 - steps, steps)  # [B, s]
    batch = torch.arange(b, device=rows.device).view(b, 1, 1)  # [B, 1, 1]
    return rows[batch, ys[:, :, None], xs[:, None, :]]  # [B, s, s, 3]


def move_landmarks(points: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, size: int,
                   scale: float = 1.0, can_flip: bool = True) -> torch.Tensor:
    """[B, P, 2] crop-store pixels -> pixels of the augmented image (scale first, then crop, then flip)."""
    moved = points.float() * scale - offsets[:, None, :].to(torch.float32)  # [B, P, 2]
    if not can_flip:
        return moved
    perm = torch.as_tensor(flip_map(points.shape[1]), device=points.device)  # [P]
    mirrored = moved[:, perm]  # [B, P, 2]
    mirrored = torch.stack([(size - 1) - mirrored[..., 0], mirrored[..., 1]], -1)  # [B, P, 2]
    return torch.where(flips[:, None, None], mirrored, moved)


def finish_images(images_u8: torch.Tensor, jitter: torch.Tensor | None = None, erase: torch.Tensor | None = None,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, H, W, 3] (on the device) -> normalised float32 [B, 3, H, W]; jitter [B, 3], erase [B, 4] optional.

    Pass None for a disabled step (decided from the config, so no device-to-host sync is needed).
    """
    x = images_u8.permute(0, 3, 1, 2)  # [B, 3, H, W] uint8, channels_last memory layout
    if not channels_last:
        x = x.contiguous()  # the layout change on uint8: a quarter of the bytes of float32
    x = x.float().div_(255.0)  # every step below in place: the same values, no full-size temporaries
    if jitter is not None:
        b, c, s = (jitter[:, k].view(-1, 1, 1, 1) for k in range(3))  # each [B, 1, 1, 1]
        x.mul_(b)
        gray_mean = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).mean(dim=(2, 3), keepdim=True)
        x.sub_(gray_mean).mul_(c).add_(gray_mean)
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # [B, 1, H, W]
        x.sub_(gray).mul_(s).add_(gray).clamp_(0.0, 1.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x.sub_(mean).div_(std)
    if erase is not None:
        h, w = x.shape[2], x.shape[3]
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        e = erase.view(-1, 4, 1, 1)
        box = (xs >= e[:, 0]) & (xs < e[:, 2]) & (ys >= e[:, 1]) & (ys < e[:, 3])  # [B, H, W]
        x.masked_fill_(box.unsqueeze(1), 0.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def augment_view(rows: torch.Tensor, key: torch.Tensor, spec: BatchAugment, view: int = 0,
                 channels_last: bool = False) -> tuple[torch.Tensor, dict]:
    """One augmented view: uint8 rows [B, S, S, 3] (already resized) -> float [B, 3, s, s] and its params."""
    params = draw_params(spec.config, key, rows.shape[0], spec.source, view)
    images = crop_flip(rows, params["offsets"], params["flips"], spec.config.image_size)  # [B, s, s, 3]
    return finish_images(images, params["jitter"], params["erase"], channels_last), params
