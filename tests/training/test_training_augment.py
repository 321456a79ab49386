"""Augmentations keep landmarks on the pixels they mark; flip maps are proper left/right swaps."""
from __future__ import annotations

import numpy as np
import torch

from training.augment import FLIP_MAPS, AugmentConfig, crop_flip, finish_images, move_landmarks, sample_params


def test_flip_maps_are_involutions_with_known_pairs():
    for n, perm in FLIP_MAPS.items():
        assert sorted(perm) == list(range(n))
        assert (perm[perm] == np.arange(n)).all()
    m68, m19, m98 = FLIP_MAPS[68], FLIP_MAPS[19], FLIP_MAPS[98]
    assert m68[36] == 45 and m68[48] == 54 and m68[30] == 30 and m68[0] == 16 and m68[62] == 62
    assert m19[0] == 5 and m19[13] == 13 and m19[18] == 18
    assert m98[96] == 97 and m98[16] == 16 and m98[60] == 72 and m98[57] == 57


def test_landmarks_follow_crop_and_flip():
    rng = np.random.default_rng(0)
    size, out = 32, 24
    points = rng.integers(6, 26, size=(4, 68, 2)).astype(np.float32)  # [B, P, 2]
    rows = np.zeros((4, size, size, 3), np.uint8)
    for b in range(4):
        x, y = points[b, 7].astype(int)  # mark landmark 7 with a unique colour
        rows[b, y, x] = (255, 0, 0)
    config = AugmentConfig(out, train=True, color_jitter=0, erasing_p=0)
    params = sample_params(config, 4, size, np.random.default_rng(3))
    params["flips"] = np.array([True, False, True, False])
    images = crop_flip(rows, params["offsets"], params["flips"], out)
    moved = move_landmarks(points, params["offsets"], params["flips"], out)
    for b in range(4):
        k = FLIP_MAPS[68][7] if params["flips"][b] else 7  # the flipped layout stores it at its mirror index
        x, y = moved[b, k]
        if 0 <= x < out and 0 <= y < out:
            assert images[b, int(y), int(x), 0] == 255


def test_finish_images_normalises_and_erases():
    images = torch.full((2, 8, 8, 3), 128, dtype=torch.uint8)
    erase = torch.tensor([[0, 0, 4, 2], [0, 0, 0, 0]])
    x = finish_images(images, None, erase)
    assert x.shape == (2, 3, 8, 8)
    assert torch.all(x[0, :, 0:2, 0:4] == 0) and torch.all(x[1] != 0)
    mean_r = (128 / 255 - 0.485) / 0.229
    assert torch.allclose(x[1, 0], torch.full((8, 8), mean_r), atol=1e-5)
    jittered = finish_images(images, torch.tensor([[1.5, 1.0, 1.0], [1.0, 1.0, 1.0]]), None)
    assert jittered[0, 0, 0, 0] > jittered[1, 0, 0, 0]  # brighter
