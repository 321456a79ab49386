"""The loader: threads gather crop rows in request order; augmentation on the device is a function of the
request (the same batches with 0 or 2 workers, and on a run resumed mid-epoch); landmarks and the second
view come out of to_device."""
from __future__ import annotations

import numpy as np
import torch

from training.augment import AugmentConfig
from training.data import PreparedVersion
from training.loader import SplitDataset, make_loader, to_device
from training.samplers import ShuffleSampler


def _setup(v, needs=()):
    pv = PreparedVersion.open(v.dataset, "latest", v.artifacts_root, v.manifests_root)
    train = pv.split_data("train", "clean")
    return pv, train, SplitDataset(pv, train, AugmentConfig(56), needs, seed=3)


def _epoch(loader, sampler, epoch, position=0):
    sampler.set_epoch(epoch, position)
    return [to_device(raw, torch.device("cpu")) for raw in loader]


def test_rows_are_one_gather_in_batch_order(tiny_prepared_version):
    pv, train, ds = _setup(tiny_prepared_version)
    sampler = ShuffleSampler(len(train), 8, seed=1)
    request = next(iter(sampler))
    raw = ds[request]
    sid = train.sample_id[request.indices]
    assert raw["image_u8"].dtype == torch.uint8 and raw["image_u8"].shape == (8,) + pv.crops.shape[1:]
    assert np.array_equal(raw["image_u8"].numpy(), pv.crops[sid])  # unsorted ids: batch order kept


def test_threads_give_the_same_batches_and_a_resumed_epoch_continues_bit_exact(tiny_prepared_version):
    _, train, ds = _setup(tiny_prepared_version, {"landmarks", "two_views"})
    sampler = ShuffleSampler(len(train), 8, seed=1)
    serial = _epoch(make_loader(ds, sampler, 0), sampler, 2)
    threaded_loader = make_loader(ds, sampler, 2, prefetch_factor=2)
    threaded = _epoch(threaded_loader, sampler, 2)
    resumed = _epoch(threaded_loader, sampler, 2, position=3)
    assert len(serial) == len(threaded) == len(resumed) + 3 >= 5
    for a, b in zip(serial, threaded):
        for key in ("image", "image2", "landmarks", "label", "sample_id"):
            assert torch.equal(a[key], b[key]), key
    for a, b in zip(serial[3:], resumed):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["landmarks"], b["landmarks"])
    assert not torch.equal(serial[0]["image"], serial[0]["image2"])
    other_epoch = _epoch(make_loader(ds, sampler, 0), sampler, 3)
    assert not torch.equal(serial[0]["image"], other_epoch[0]["image"])
    threaded_loader.close()


def test_landmarks_stay_on_their_pixels_through_to_device(tiny_prepared_version):
    """A bright dot drawn at a landmark in the stored rows is found at the moved landmark after augmentation."""
    _, train, ds = _setup(tiny_prepared_version, {"landmarks"})
    ds.augment = AugmentConfig(56, color_jitter=0, erasing_p=0)
    ds.spec = type(ds.spec)(ds.augment, ds.spec.source)
    sampler = ShuffleSampler(len(train), 8, seed=0)
    raw = ds[next(iter(sampler))]
    rows = raw["image_u8"].clone()
    k = 30  # nose tip
    xy = raw["landmarks"][:, k].round().long()  # [B, 2] stored-crop pixels
    rows[torch.arange(8), xy[:, 1], xy[:, 0]] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    raw["image_u8"] = rows
    batch = to_device(raw, torch.device("cpu"))
    red = batch["image"][:, 0] - batch["image"][:, 1]  # [B, 56, 56]: red minus green
    moved = batch["landmarks"][:, k].round().long()  # the nose tip maps to itself under a flip
    for b in range(8):
        x, y = moved[b].tolist()
        if 0 <= x < 56 and 0 <= y < 56:
            assert red[b, y, x] == red[b].max()
