"""Epoch-planned batch samplers: plain shuffling, progressively balanced sampling, LDL-ALSG groups.

Every sampler yields `BatchRequest`s (positions into a split plus, for groups, group/role/weight) that a
`training.loader.SplitDataset` turns into a batch. An epoch's plan depends only on (seed, epoch), so the
checkpointable state is just {epoch, position (batches already consumed), seed}: a resumed run replays
exactly the remaining batches. Under DDP each rank takes every world_size-th sample (or group) of the
plan, after trimming to a whole number of global batches, so ranks run the same number of steps.
"""
from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.contract.errors import ConfigError

ROLE_CENTRE, ROLE_AU, ROLE_LANDMARK = 0, 1, 2


@dataclass(frozen=True)
class BatchRequest:
    """One batch to load: positions in the split, and where it sits in the epoch (seeds augmentation)."""

    epoch: int
    number: int                       # batch number within the epoch
    indices: np.ndarray               # [B] int64 positions in the split
    group: np.ndarray | None = None   # [B] int64 group within the batch (grouped batches only)
    role: np.ndarray | None = None    # [B] int64 0 centre, 1 AU neighbour, 2 landmark neighbour
    weight: np.ndarray | None = None  # [B] float32 similarity to the group's centre (0 for centres)


def rank_slices(order: np.ndarray, batch: int, rank: int, world: int, drop_last: bool = True) -> list[np.ndarray]:
    """This rank's batches of `order` (items), trimmed to whole global batches when drop_last."""
    if drop_last:
        usable = len(order) // (batch * world) * batch * world
        if usable == 0:
            raise ConfigError(f"{len(order)} training items cannot fill one batch of {batch} on {world} "
                              f"process(es); lower the batch size")
        order = order[:usable]
    mine = order[rank::world]
    return [mine[i:i + batch] for i in range(0, len(mine), batch)]


class EpochBatchSampler(abc.ABC):
    """Base class: subclasses implement `_plan(epoch) -> list[BatchRequest]` for this rank."""

    kind = "base"

    def __init__(self, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, list[BatchRequest]] | None = None

    def plan(self, epoch: int) -> list[BatchRequest]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._plan(epoch))
        return self._cache[1]

    @abc.abstractmethod
    def _plan(self, epoch: int) -> list[BatchRequest]:
        """This rank's batches of `epoch`, in order."""

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, 0x5A3])

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """Start `epoch` at batch `position` (batches already consumed)."""
        self.epoch, self.position = int(epoch), int(position)

    def __len__(self) -> int:
        """Batches in a full epoch on this rank."""
        return len(self.plan(self.epoch))

    def remaining(self) -> int:
        return len(self) - self.position

    def __iter__(self) -> Iterator[BatchRequest]:
        yield from self.plan(self.epoch)[self.position:]

    def state_dict(self, position: int | None = None) -> dict:
        return {"kind": self.kind, "epoch": self.epoch,
                "position": self.position if position is None else int(position), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind", self.kind) != self.kind:
            raise ConfigError(f"checkpoint sampler is {state.get('kind')!r}, this run uses {self.kind!r}")
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state["position"])


class ShuffleSampler(EpochBatchSampler):
    """A fresh permutation of the split every epoch (drop_last); or a fixed order when shuffle=False."""

    kind = "shuffle"

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True):
        super().__init__(seed, rank, world_size)
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last

    def _plan(self, epoch: int) -> list[BatchRequest]:
        order = self._rng(epoch).permutation(self.n) if self.shuffle else np.arange(self.n)
        batches = rank_slices(order, self.batch_size, self.rank, self.world_size, self.drop_last)
        return [BatchRequest(epoch, i, b.astype(np.int64)) for i, b in enumerate(batches)]


def progressive_class_probs(counts: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """Class sampling probabilities moving linearly from the empirical distribution to uniform.

    p(t) = (1 - t) * n_c / N + t * 1 / C_present with t = epoch / (epochs - 1); absent classes stay 0.
    """
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    t = epoch / max(1, epochs - 1)
    uniform = present / present.sum()
    return (1 - t) * counts / counts.sum() + t * uniform


class BalancedSampler(EpochBatchSampler):
    """Progressively balanced sampling with replacement (Kang et al. 2020), N draws per epoch."""

    kind = "balanced"

    def __init__(self, labels: np.ndarray, num_classes: int, batch_size: int, epochs: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__(seed, rank, world_size)
        self.labels = np.asarray(labels, np.int64)
        self.counts = np.bincount(self.labels, minlength=num_classes)
        self.batch_size, self.epochs = batch_size, epochs

    def _plan(self, epoch: int) -> list[BatchRequest]:
        probs = progressive_class_probs(self.counts, epoch, self.epochs)  # [C]
        per_sample = probs[self.labels] / self.counts[self.labels]  # [N]
        order = self._rng(epoch).choice(len(self.labels), size=len(self.labels), p=per_sample / per_sample.sum())
        batches = rank_slices(order, self.batch_size, self.rank, self.world_size)
        return [BatchRequest(epoch, i, b.astype(np.int64)) for i, b in enumerate(batches)]


def group_members(centres: np.ndarray, neighbor_lists: list[tuple[int, np.ndarray, np.ndarray, int]],
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Expand [G] centres into groups: centre then each space's first k neighbours, no face twice in a group.

    neighbor_lists: (role, neighbours [n, K] positions or -1, similarity [n, K], k) per space, taken in order.
    Each space contributes its nearest usable neighbours that are not already in the group (the centre, or
    an earlier space's neighbour: AU and landmark graphs often share a first neighbour), walking down its K.
    When a space runs out (-1 slots: not a usable training sample; or duplicates), the slot takes a face
    drawn with (seed, centre) from the rest of the split with weight 0: it is a training sample of the group
    but guides nothing. Returns indices, group, role, weight, each [G * (1 + sum k)].
    """
    spaces = [(r, nbr, sim, k) for r, nbr, sim, k in neighbor_lists if k > 0]
    g = len(centres)
    idx, role, weight = [centres[:, None]], [np.zeros((g, 1), np.int64)], [np.zeros((g, 1), np.float32)]
    for r, nbr, sim, k in spaces:
        chosen = nbr[centres, :k]  # [G, k] the plain choice; rows with a conflict are redone below
        idx.append(chosen.astype(np.int64))
        role.append(np.full((g, k), r, np.int64))
        weight.append(sim[centres, :k].astype(np.float32))
    members, weights = np.concatenate(idx, 1), np.concatenate(weight, 1)  # [G, 1 + sum k]
    ordered = np.sort(members, axis=1)                                     # [G, 1 + sum k]
    conflict = (members < 0).any(1) | (ordered[:, 1:] == ordered[:, :-1]).any(1)  # [G]
    n = spaces[0][1].shape[0] if spaces else 0
    for row in np.flatnonzero(conflict):
        members[row], weights[row] = _unique_group(int(centres[row]), spaces, n, seed)
    size = members.shape[1]
    group = np.repeat(np.arange(g, dtype=np.int64), size)
    return members.reshape(-1), group, np.concatenate(role, 1).reshape(-1), weights.reshape(-1)


def _unique_group(centre: int, spaces: list, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One group's members [1 + sum k] and weights, every face once (see group_members)."""
    taken, members, weights, short = {centre}, [centre], [0.0], 0
    for _, nbr, sim, k in spaces:
        found = 0
        for j, candidate in enumerate(nbr[centre].tolist()):
            if found == k:
                break
            if candidate >= 0 and candidate not in taken:
                taken.add(candidate)
                members.append(candidate)
                weights.append(float(sim[centre, j]))
                found += 1
        members += [-1] * (k - found)
        weights += [0.0] * (k - found)
        short += k - found
    if short:
        if n - len(taken) < short:
            raise ConfigError(f"a group of {len(members)} distinct faces needs more than the split's {n} samples; "
                              f"lower data.au_neighbors / data.landmark_neighbors")
        rest = np.setdiff1d(np.arange(n), np.fromiter(taken, np.int64))
        fillers = iter(np.random.default_rng([seed, centre, 0x6F]).choice(rest, size=short, replace=False).tolist())
        members = [next(fillers) if m < 0 else m for m in members]
    return np.asarray(members, np.int64), np.asarray(weights, np.float32)


class GroupedBatchSampler(EpochBatchSampler):
    """LDL-ALSG batches: `groups_per_batch` groups of a centre, K_au AU and K_lm landmark neighbours."""

    kind = "groups"

    def __init__(self, n: int, au: tuple[np.ndarray, np.ndarray] | None, landmarks: tuple[np.ndarray, np.ndarray] | None,
                 k_au: int = 4, k_landmarks: int = 4, groups_per_batch: int = 32, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        super().__init__(seed, rank, world_size)
        self.n, self.groups_per_batch = n, groups_per_batch
        self.spaces = []
        for role, graph, k, name in ((ROLE_AU, au, k_au, "au"), (ROLE_LANDMARK, landmarks, k_landmarks, "landmarks")):
            if k <= 0:
                continue
            if graph is None:
                raise ConfigError(f"grouped batches need the {name} graph for {k} neighbours; prepare it or set "
                                  f"data.{'au' if name == 'au' else 'landmark'}_neighbors=0")
            nbr, sim = graph
            if nbr.shape[0] != n or nbr.shape[1] < k:
                raise ConfigError(f"{name} graph has {nbr.shape[1]} neighbours per sample; {k} requested")
            self.spaces.append((role, nbr, sim, k))
        if not self.spaces:
            raise ConfigError("grouped batches need at least one neighbour space (au or landmark neighbours > 0)")

    @property
    def group_size(self) -> int:
        return 1 + sum(k for *_, k in self.spaces)

    def _plan(self, epoch: int) -> list[BatchRequest]:
        centres = self._rng(epoch).permutation(self.n)
        plan = []
        for i, chunk in enumerate(rank_slices(centres, self.groups_per_batch, self.rank, self.world_size)):
            idx, group, role, weight = group_members(chunk.astype(np.int64), self.spaces, self.seed)
            plan.append(BatchRequest(epoch, i, idx, group, role, weight))
        return plan
