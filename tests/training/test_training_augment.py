"""Augmentations on the device: landmarks stay on the pixels they mark, flip maps are proper left/right
swaps, the per-sample draws are deterministic and have today's distributions (the per-batch numpy draw they
replaced, kept below as the reference), and the batched crop equals slicing sample by sample."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.augment import (
    FLIP_MAPS,
    AugmentConfig,
    BatchAugment,
    _mul32,
    augment_key,
    augment_view,
    crop_flip,
    draw_params,
    finish_images,
    move_landmarks,
    random_bits,
)


def reference_numpy_params(config: AugmentConfig, batch: int, source: int, rng: np.random.Generator) -> dict:
    """The reference: the per-batch numpy draw training/augment.py used before the device pipeline."""
    size, room = config.image_size, source - config.image_size
    offsets = rng.integers(0, room + 1, size=(batch, 2))
    flips = rng.random(batch) < 0.5
    j = config.color_jitter
    jitter = rng.uniform(max(0.0, 1 - j), 1 + j, size=(batch, 3)).astype(np.float32)
    area = rng.uniform(*config.erasing_scale, size=batch) * size * size
    log_ratio = rng.uniform(np.log(config.erasing_ratio[0]), np.log(config.erasing_ratio[1]), size=batch)
    h = np.clip(np.round(np.sqrt(area * np.exp(log_ratio))), 1, size).astype(np.int64)
    w = np.clip(np.round(np.sqrt(area / np.exp(log_ratio))), 1, size).astype(np.int64)
    y0 = (rng.random(batch) * (size - h + 1)).astype(np.int64)
    x0 = (rng.random(batch) * (size - w + 1)).astype(np.int64)
    on = rng.random(batch) < config.erasing_p
    erase = np.where(on[:, None], np.stack([x0, y0, x0 + w, y0 + h], 1), 0)
    return {"offsets": offsets, "flips": flips, "jitter": jitter, "erase": erase}


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def _device_params(config, batches: int, batch: int, source: int) -> dict:
    draws = [draw_params(config, augment_key(7, 0, n), batch, source) for n in range(batches)]
    return {k: torch.cat([d[k] for d in draws]).numpy() for k in draws[0]}


def test_draw_statistics_equal_the_numpy_reference():
    config, source, n = AugmentConfig(224), 256, 40 * 1024
    new = _device_params(config, 40, 1024, source)
    old = reference_numpy_params(config, n, source, np.random.default_rng(0))
    critical = 1.95 * np.sqrt(2 / n) * 1.3  # KS at alpha 0.001, with a margin
    for axis in (0, 1):  # crop positions: uniform over 0..32 on both axes
        assert _ks(new["offsets"][:, axis], old["offsets"][:, axis]) < critical
        assert new["offsets"][:, axis].min() == 0 and new["offsets"][:, axis].max() == source - 224
    assert abs(new["flips"].mean() - 0.5) < 0.01 and abs(old["flips"].mean() - 0.5) < 0.01
    for k in range(3):  # brightness, contrast, saturation factors in [0.6, 1.4)
        assert _ks(new["jitter"][:, k], old["jitter"][:, k]) < critical
        assert 0.6 <= new["jitter"][:, k].min() < 0.61 and 1.39 < new["jitter"][:, k].max() < 1.4
    on_new, on_old = new["erase"][:, 2] > 0, old["erase"][:, 2] > 0
    assert abs(on_new.mean() - on_old.mean()) < 0.015
    for a, b in ((new["erase"][on_new], old["erase"][on_old]),):
        area_a, area_b = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        assert _ks(area_a, area_b) < 1.5 * critical
        assert _ks(a[:, 0], b[:, 0]) < 1.5 * critical and _ks(a[:, 1], b[:, 1]) < 1.5 * critical
        assert (a[:, 2] <= 224).all() and (a[:, 3] <= 224).all()


def test_draws_are_per_sample_deterministic_and_independent():
    config = AugmentConfig(224)
    a = draw_params(config, augment_key(3, 2, 5), 16, 256)
    again = draw_params(config, augment_key(3, 2, 5), 16, 256)
    prefix = draw_params(config, augment_key(3, 2, 5), 8, 256)  # a sample's draw does not depend on batch size
    for k in a:
        assert torch.equal(a[k], again[k]) and torch.equal(a[k][:8], prefix[k])
    for other in (augment_key(4, 2, 5), augment_key(3, 3, 5), augment_key(3, 2, 6)):
        assert not torch.equal(a["offsets"], draw_params(config, other, 16, 256)["offsets"])
    view2 = draw_params(config, augment_key(3, 2, 5), 16, 256, view=1)
    assert not torch.equal(a["offsets"], view2["offsets"])
    bits = random_bits(augment_key(0, 0, 0), 4096, 0).numpy().astype(np.float64)  # [B, D]
    corr = np.corrcoef(bits.T)  # draws of one sample are uncorrelated
    assert np.abs(corr - np.eye(len(corr))).max() < 0.06
    assert abs(np.corrcoef(bits[:-1, 0], bits[1:, 0])[0, 1]) < 0.06  # neighbouring slots too


def test_mul32_is_multiplication_mod_2_32():
    x = torch.tensor([0, 1, 0xFFFFFFFF, 0x12345678, 0x9E3779B9], dtype=torch.int64)
    for c in (0x7FEB352D, 0x846CA68B, 0xFFFFFFFF):
        assert _mul32(x, c).tolist() == [(int(v) * c) % 2**32 for v in x]


def test_eval_is_a_centre_crop_with_nothing_random():
    config = AugmentConfig(56, train=False)
    p = draw_params(config, augment_key(0, 0, 0), 4, 64)
    assert (p["offsets"] == 4).all() and not p["flips"].any() and p["jitter"] is None and p["erase"] is None
    with pytest.raises(ConfigError, match="image_size 80 is larger"):
        draw_params(AugmentConfig(80), augment_key(0, 0, 0), 4, 64)


def test_flip_maps_are_involutions_with_known_pairs():
    for n, perm in FLIP_MAPS.items():
        assert sorted(perm) == list(range(n))
        assert (perm[perm] == np.arange(n)).all()
    m68, m19, m98 = FLIP_MAPS[68], FLIP_MAPS[19], FLIP_MAPS[98]
    assert m68[36] == 45 and m68[48] == 54 and m68[30] == 30 and m68[0] == 16 and m68[62] == 62
    assert m19[0] == 5 and m19[13] == 13 and m19[18] == 18
    assert m98[96] == 97 and m98[16] == 16 and m98[60] == 72 and m98[57] == 57


def test_crop_flip_is_one_gather_equal_to_slicing_each_sample():
    rows = torch.randint(0, 256, (6, 40, 40, 3), dtype=torch.uint8)
    p = draw_params(AugmentConfig(32), augment_key(1, 0, 0), 6, 40)
    out = crop_flip(rows, p["offsets"], p["flips"], 32)
    for b in range(6):
        x, y = p["offsets"][b].tolist()
        patch = rows[b, y:y + 32, x:x + 32]
        assert torch.equal(out[b], patch.flip(1) if p["flips"][b] else patch)


def test_landmarks_follow_crop_and_flip():
    rng = np.random.default_rng(0)
    size, out = 32, 24
    points = torch.from_numpy(rng.integers(6, 26, size=(4, 68, 2)).astype(np.float32))  # [B, P, 2]
    rows = torch.zeros((4, size, size, 3), dtype=torch.uint8)
    for b in range(4):
        x, y = points[b, 7].long().tolist()  # mark landmark 7 with a unique colour
        rows[b, y, x] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    config = AugmentConfig(out, train=True, color_jitter=0, erasing_p=0)
    params = draw_params(config, augment_key(3, 0, 0), 4, size)
    params["flips"] = torch.tensor([True, False, True, False])
    images = crop_flip(rows, params["offsets"], params["flips"], out)
    moved = move_landmarks(points, params["offsets"], params["flips"], out)
    seen = 0
    for b in range(4):
        k = FLIP_MAPS[68][7] if params["flips"][b] else 7  # the flipped layout stores it at its mirror index
        x, y = moved[b, k].tolist()
        if 0 <= x < out and 0 <= y < out:
            assert images[b, int(y), int(x), 0] == 255
            seen += 1
    assert seen >= 2


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


def test_augment_view_is_a_function_of_the_key_and_channels_last_changes_layout_only():
    rows = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    spec = BatchAugment(AugmentConfig(56), 64)
    a, pa = augment_view(rows, augment_key(0, 1, 2), spec)
    b, _ = augment_view(rows, augment_key(0, 1, 2), spec, channels_last=True)
    assert a.shape == (4, 3, 56, 56) and torch.equal(a, b) and b.is_contiguous(memory_format=torch.channels_last)
    c, _ = augment_view(rows, augment_key(0, 1, 2), spec, view=1)
    assert not torch.equal(a, c)


@pytest.mark.gpu
def test_draws_and_views_are_the_same_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    rows = torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8)
    spec = BatchAugment(AugmentConfig(56), 64)
    key = augment_key(5, 1, 9)
    cpu, pc = augment_view(rows, key, spec)
    gpu, pg = augment_view(rows.cuda(), key.cuda(), spec)
    for k in ("offsets", "flips", "erase"):
        assert torch.equal(pc[k], pg[k].cpu())
    assert torch.allclose(pc["jitter"], pg["jitter"].cpu())
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)
