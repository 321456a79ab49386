"""From sampler requests to device batches in the method contract (training/methods/base.py).

`SplitDataset[request]` builds a whole batch in a loader worker: uint8 crop rows sliced from the memmap
(sorted reads, no decoding), the seeded crop/flip (landmarks moved with them), labels and the optional
per-sample fields a method `needs`. `to_device` moves it (pinned, non-blocking) and finishes the images on
the device: float, colour jitter, normalisation, random erasing, channels_last. `make_loader` wires a
DataLoader with workers, pinned memory and persistent workers so the device is not kept waiting.
`build_sampler`, `train_loader` and `eval_loader` build them from a run's TrainConfig.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from pipeline.contract.errors import ConfigError
from training.augment import AugmentConfig, crop_flip, finish_images, move_landmarks, sample_params
from training.data import PreparedVersion, SplitData
from training.samplers import BalancedSampler, BatchRequest, GroupedBatchSampler, ShuffleSampler

KNOWN_NEEDS = frozenset({"landmarks", "aus", "va", "votes", "two_views", "groups"})


def check_needs(needs: Iterable[str], version: PreparedVersion, method: str) -> None:
    """Fail at once when a method needs something this version does not have."""
    unknown = sorted(set(needs) - KNOWN_NEEDS)
    if unknown:
        raise ConfigError(f"method {method!r} needs unknown batch fields {unknown}; known: {sorted(KNOWN_NEEDS)}")
    have = {"landmarks": version.landmarks is not None, "aus": version.aus is not None,
            "va": version.va is not None, "votes": version.votes is not None}
    missing = [n for n in needs if n in have and not have[n]]
    if missing:
        raise ConfigError(f"method {method!r} needs {missing}, which {version.dataset} version {version.version} "
                          f"does not provide; prepare them (`make prepare DATASET={version.dataset}`) or pick "
                          f"another method")


class SplitDataset(torch.utils.data.Dataset):
    """Batches of one split; indexed by BatchRequest (use with DataLoader(batch_size=None))."""

    def __init__(self, version: PreparedVersion, split: SplitData, augment: AugmentConfig,
                 needs: Iterable[str] = (), seed: int = 0, resize: int = 0):
        self.version, self.split, self.augment = version, split, augment
        self.needs, self.seed = frozenset(needs), int(seed)
        self.source_size = resize or version.crop_size
        self.resize = resize if resize and resize != version.crop_size else 0

    def __len__(self) -> int:
        return len(self.split)

    def _rows(self, sample_ids: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] crop rows, read in sorted order (memmap locality) and put back in batch order."""
        order = np.argsort(sample_ids, kind="stable")
        rows = np.empty((len(sample_ids),) + self.version.crops.shape[1:], np.uint8)
        rows[order] = self.version.crops[sample_ids[order]]
        if self.resize:
            x = torch.from_numpy(rows).permute(0, 3, 1, 2).float()  # [B, 3, S, S]
            x = torch.nn.functional.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                                                antialias=True, align_corners=False)
            rows = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [B, R, R, 3]
        return rows

    def _view(self, rows: np.ndarray, request: BatchRequest, view: int) -> tuple[dict, dict]:
        rng = np.random.default_rng([self.seed, request.epoch, request.number, view])
        params = sample_params(self.augment, len(rows), self.source_size, rng)
        images = crop_flip(rows, params["offsets"], params["flips"], self.augment.image_size)
        out = {"image_u8": torch.from_numpy(images)}  # [B, h, w, 3] uint8
        if self.augment.train and self.augment.color_jitter > 0:
            out["jitter"] = torch.from_numpy(params["jitter"])  # [B, 3]
        if self.augment.train and self.augment.erasing_p > 0:
            out["erase"] = torch.from_numpy(params["erase"])  # [B, 4]
        return out, params

    def __getitem__(self, request: BatchRequest) -> dict[str, torch.Tensor]:
        idx = np.asarray(request.indices, np.int64)  # [B] positions in the split
        sid = self.split.sample_id[idx]  # [B] global sample ids
        rows = self._rows(sid)
        batch, params = self._view(rows, request, 0)
        batch.update({"label": torch.from_numpy(self.split.label[idx]),
                      "clean_label": torch.from_numpy(self.split.clean_label[idx]),
                      "sample_id": torch.from_numpy(sid), "index": torch.from_numpy(idx)})
        if "two_views" in self.needs:
            second, _ = self._view(rows, request, 1)
            batch.update({("image2_u8" if k == "image_u8" else f"{k}2"): v for k, v in second.items()})
        if "landmarks" in self.needs:
            scale = self.source_size / self.version.crop_size
            points = move_landmarks(self.version.landmarks[sid], params["offsets"], params["flips"],
                                    self.augment.image_size, scale)
            batch["landmarks"] = torch.from_numpy(points)  # [B, P, 2]
        for need, values in (("aus", self.version.aus), ("va", self.version.va), ("votes", self.version.votes)):
            if need in self.needs:
                batch[need] = torch.from_numpy(np.ascontiguousarray(values[sid], dtype=np.float32))
        if request.group is not None:
            batch.update({"group": torch.from_numpy(request.group), "role": torch.from_numpy(request.role),
                          "weight": torch.from_numpy(request.weight)})
        return batch


def to_device(raw: dict[str, torch.Tensor], device: torch.device, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Move a loader batch to the device and finish its images: the batch a method's training_step sees."""
    moved = {k: v.to(device, non_blocking=True) for k, v in raw.items()}
    batch = {k: v for k, v in moved.items() if k not in ("image_u8", "jitter", "erase", "image2_u8", "jitter2",
                                                         "erase2")}
    batch["image"] = finish_images(moved["image_u8"], moved.get("jitter"), moved.get("erase"), channels_last)
    if "image2_u8" in moved:
        batch["image2"] = finish_images(moved["image2_u8"], moved.get("jitter2"), moved.get("erase2"), channels_last)
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: SplitDataset, sampler, num_workers: int = 0, pin_memory: bool = False,
                persistent_workers: bool = True, prefetch_factor: int = 4, seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over whole-batch requests. A private generator keeps the global RNG untouched."""
    kwargs = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor,
                  "worker_init_fn": _worker_init}
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=num_workers,
                                       pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
                                       **kwargs)


# ------------------------------------------------------------------------------------ from a TrainConfig
def build_sampler(config, needs: Iterable[str], version: PreparedVersion, train: SplitData, dist, graphs: dict):
    """The training sampler a config asks for: grouped batches (when the method needs groups), balanced, shuffle.

    `dist` is the run's training.distributed.DistInfo; `graphs` maps space -> (neighbours, similarity)
    of the training split (PreparedVersion.train_graph).
    """
    d, seed = config.data, config.runtime.seed
    common = {"seed": seed, "rank": dist.rank, "world_size": dist.world_size}
    if "groups" in needs or d.sampler == "groups":
        missing = [g for g, k in ((d.au_graph, d.au_neighbors), (d.landmark_graph, d.landmark_neighbors))
                   if k > 0 and g not in graphs]
        if missing:
            raise ConfigError(f"grouped batches need graphs {missing}; {version.dataset} version {version.version} "
                              f"has {sorted(graphs) or 'none'}")
        return GroupedBatchSampler(len(train), graphs.get(d.au_graph), graphs.get(d.landmark_graph),
                                   d.au_neighbors, d.landmark_neighbors, d.groups_per_batch, **common)
    if d.sampler == "balanced":
        return BalancedSampler(train.label, version.num_classes, config.batch_size, config.epochs, **common)
    return ShuffleSampler(len(train), config.batch_size, **common)


def augment_config(config, train: bool) -> AugmentConfig:
    d = config.data
    return AugmentConfig(d.image_size, train, d.random_crop, d.flip, d.color_jitter, d.erasing_p,
                         tuple(d.erasing_scale), tuple(d.erasing_ratio))


def _config_loader(config, dataset: SplitDataset, sampler, device: torch.device):
    d = config.data
    return make_loader(dataset, sampler, d.num_workers, d.pin_memory and device.type == "cuda",
                       d.persistent_workers, d.prefetch_factor, config.runtime.seed)


def train_loader(config, version: PreparedVersion, train: SplitData, needs: Iterable[str], sampler,
                 device: torch.device):
    """The augmented training loader: batches of `train` in the sampler's order, with what `needs` asks for."""
    dataset = SplitDataset(version, train, augment_config(config, True), needs, config.runtime.seed,
                           config.data.resize)
    return _config_loader(config, dataset, sampler, device)


def eval_loader(config, version: PreparedVersion, split: SplitData, device: torch.device):
    """An unshuffled, unaugmented loader over `split` (evaluation, branch selection)."""
    sampler = ShuffleSampler(len(split), config.data.eval_batch_size, shuffle=False, drop_last=False)
    dataset = SplitDataset(version, split, augment_config(config, False), (), config.runtime.seed, config.data.resize)
    return _config_loader(config, dataset, sampler, device)
