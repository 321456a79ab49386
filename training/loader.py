"""From sampler requests to device batches in the method contract (training/methods/base.py).

`SplitDataset[request]` is all a loader worker does: one gather of the batch's uint8 crop rows from the
memory-mapped store (torch.index_select into a fresh buffer, pinned on CUDA), labels, ids, the per-sample
fields a method `needs`, and the batch's augmentation key. `BatchLoader` runs those gathers ahead on
worker threads (the gather releases the GIL: no inter-process copies) and, on CUDA, copies each batch to
the device one batch ahead on a side stream. `to_device` augments on the device (training/augment.py:
resize, crop, flip, jitter, normalisation, erasing, second view, landmarks; drawn per sample from the key).
`build_sampler`, `train_loader` and `eval_loader` build them from a run's TrainConfig.
"""
from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pipeline.contract.errors import ConfigError
from training.augment import (
    AugmentConfig,
    BatchAugment,
    augment_key,
    augment_view,
    flip_map,
    move_landmarks,
    resize_rows,
)
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


class SplitDataset:
    """Batches of one split, indexed by BatchRequest: the gather a loader worker does.

    A batch holds the uint8 crop rows as stored ("image_u8" [B, S, S, 3], one gather from the memmap into
    a fresh, pinned when asked, buffer), labels, ids, the raw landmarks / AUs / VA / votes a method
    `needs`, the batch's augmentation key and a BatchAugment saying what `to_device` does on the device.
    """

    def __init__(self, version: PreparedVersion, split: SplitData, augment: AugmentConfig,
                 needs: Iterable[str] = (), seed: int = 0, resize: int = 0):
        self.version, self.split, self.augment = version, split, augment
        self.needs, self.seed = frozenset(needs), int(seed)
        source = resize or version.crop_size
        augment.check(source)
        points = version.landmarks.shape[1] if "landmarks" in self.needs and version.landmarks is not None else 0
        if points and augment.train and augment.flip:
            flip_map(points)  # unknown layouts fail here, not mid-epoch
        self.spec = BatchAugment(augment, source, resize if resize and resize != version.crop_size else 0,
                                 2 if "two_views" in self.needs else 1, source / version.crop_size)
        self.pin_memory = False
        self._crops: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.split)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_crops": None}  # the memmap view is rebuilt, never pickled

    def crops(self) -> torch.Tensor:
        """The crop store as a uint8 tensor [N, S, S, 3] over the read-only memmap (never written)."""
        if self._crops is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self._crops = torch.from_numpy(self.version.crops)
        return self._crops

    def _rows(self, sample_ids: np.ndarray) -> torch.Tensor:
        """uint8 [B, S, S, 3] crop rows in batch order: one index_select from the memmap into a new buffer."""
        crops = self.crops()
        out = torch.empty((len(sample_ids),) + tuple(crops.shape[1:]), dtype=torch.uint8,
                          pin_memory=self.pin_memory)  # [B, S, S, 3]
        return torch.index_select(crops, 0, torch.from_numpy(sample_ids), out=out)

    def __getitem__(self, request: BatchRequest) -> dict:
        idx = np.asarray(request.indices, np.int64)  # [B] positions in the split
        sid = self.split.sample_id[idx]  # [B] global sample ids
        batch = {"image_u8": self._rows(sid), "augment": self.spec,
                 "augment_key": augment_key(self.seed, request.epoch, request.number),
                 "label": torch.from_numpy(self.split.label[idx]),
                 "clean_label": torch.from_numpy(self.split.clean_label[idx]),
                 "sample_id": torch.from_numpy(sid), "index": torch.from_numpy(idx)}
        if "landmarks" in self.needs:
            batch["landmarks"] = torch.from_numpy(np.ascontiguousarray(self.version.landmarks[sid],
                                                                       dtype=np.float32))  # [B, P, 2] store px
        for need, values in (("aus", self.version.aus), ("va", self.version.va), ("votes", self.version.votes)):
            if need in self.needs:
                batch[need] = torch.from_numpy(np.ascontiguousarray(values[sid], dtype=np.float32))
        if request.group is not None:
            batch.update({"group": torch.from_numpy(request.group), "role": torch.from_numpy(request.role),
                          "weight": torch.from_numpy(request.weight)})
        return batch


def to_device(raw: dict, device: torch.device, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Move a loader batch to the device and augment it there: the batch a method's training_step sees.

    image [B, 3, s, s] float (and image2 for two views), landmarks in the augmented image's pixels; the
    rest as the loader gave it. Tensors already on the device (copied ahead by the loader) stay put.
    """
    spec: BatchAugment = raw["augment"]
    moved = {k: v.to(device, non_blocking=True) for k, v in raw.items() if isinstance(v, torch.Tensor)}
    rows, key = moved.pop("image_u8"), moved.pop("augment_key")  # [B, S, S, 3], [4]
    if spec.resize:
        rows = resize_rows(rows, spec.resize)  # [B, R, R, 3]
    batch = dict(moved)
    batch["image"], params = augment_view(rows, key, spec, 0, channels_last)
    if spec.views > 1:
        batch["image2"], _ = augment_view(rows, key, spec, 1, channels_last)
    if "landmarks" in moved:
        config = spec.config
        batch["landmarks"] = move_landmarks(moved["landmarks"], params["offsets"], params["flips"], config.image_size,
                                            spec.landmark_scale, config.train and config.flip)  # [B, P, 2]
    return batch


class BatchLoader:
    """Whole batches for a sampler's requests, gathered ahead by `num_workers` threads, in request order.

    The gather (one torch.index_select from the memmap per batch) releases the GIL, so threads run in
    parallel and write straight into the batch's buffer: no inter-process copy, no second copy into pinned
    memory (the buffer is pinned itself when `pin_memory`). On CUDA with `device` given, each batch's
    tensors are also copied to the device one batch ahead on a side stream. `num_workers=0` gathers in the
    calling thread. Iterating starts a new pass over the sampler (its current epoch), as a DataLoader does.
    """

    def __init__(self, dataset: SplitDataset, sampler, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int = 4, device: torch.device | None = None):
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.prefetch = max(0, int(num_workers)), max(1, int(prefetch_factor))
        self.device = torch.device(device) if device is not None else None
        self.cuda_ahead = self.device is not None and self.device.type == "cuda"
        dataset.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}

    def _batches(self):
        requests = iter(self.sampler)
        if self.num_workers == 0:
            yield from (self.dataset[r] for r in requests)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="loader")
        pending: deque = deque()
        for request in requests:
            pending.append(self._pool.submit(self.dataset.__getitem__, request))
            if len(pending) >= self.num_workers * self.prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def __iter__(self):
        if not self.cuda_ahead:
            yield from self._batches()
            return
        stream = torch.cuda.Stream(self.device)
        ahead = None
        for raw in self._batches():
            with torch.cuda.stream(stream):
                moved = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                         for k, v in raw.items()}
            if ahead is not None:
                yield self._ready(ahead, stream)
            ahead = moved
        if ahead is not None:
            yield self._ready(ahead, stream)

    def _ready(self, batch: dict, stream) -> dict:
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(stream)
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                value.record_stream(current)
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def make_loader(dataset: SplitDataset, sampler, num_workers: int = 0, pin_memory: bool = False,
                persistent_workers: bool = True, prefetch_factor: int = 4, seed: int = 0,
                device: torch.device | None = None) -> BatchLoader:
    """A BatchLoader over whole-batch requests (persistent_workers and seed: kept for callers; threads
    persist for the loader's life and nothing in it draws from a global generator)."""
    return BatchLoader(dataset, sampler, num_workers, pin_memory, prefetch_factor, device)


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
                       d.persistent_workers, d.prefetch_factor, config.runtime.seed, device)


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
