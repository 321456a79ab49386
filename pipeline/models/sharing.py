"""Thread- and process-safe access to models that must not be called by two threads at once.

dlib's HOG detector keeps scratch state inside the object: two task threads sharing one cached detector
changed 10 of 40 boxes. Every per-image backend therefore borrows its model:

    with HOG_DETECTORS.borrow() as detector:
        detector.run(image, 1, 0.0)

`ModelPool` (mode "pool", the default) hands each concurrent caller its own instance: a free one if any,
else a new one from the factory, returned to the free list afterwards. So there is never more than one
model per thread in flight, threads run in parallel (dlib releases the GIL), and a thread pool that is
recreated (a new Prefect task runner, a new Dask worker thread) reuses the models already built instead
of paying the load again (HOG 0.4 s, 68-point predictor 0.9 s here). Mode "lock" keeps one instance
and serialises calls on it. bench/bench_face_stages.py measures both (`set_mode`); "pool" was faster
(bench/results/bench_face_stages.json, "sharing_*"). Torch models use `LockedModel`: one instance per process,
calls serialised (one device gains nothing from concurrent calls, and a copy per thread costs memory).

Processes: every process builds its own instances (module state). After os.fork the child starts with
fresh locks and empty free lists, so a fork taken while another thread held a model cannot deadlock
or share it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pipeline.contract.errors import ConfigError, choices_message

T = TypeVar("T")
MODES = ("pool", "lock")
_mode = "pool"
_pools: weakref.WeakSet = weakref.WeakSet()


def set_mode(mode: str) -> None:
    """Sharing mode for every ModelPool in this process (bench use); clears built instances."""
    global _mode
    if mode not in MODES:
        raise ConfigError(choices_message("model sharing mode", mode, MODES))
    _mode = mode
    for pool in list(_pools):
        pool.clear()


def mode() -> str:
    return _mode


class ModelPool(Generic[T]):
    """Instances of one model, at most one per concurrent caller (see the module docstring)."""

    def __init__(self, name: str, factory: Callable[[], T]) -> None:
        self.name, self._factory = name, factory
        self._lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._free: list[T] = []
        self._shared: T | None = None
        self.built = 0
        _pools.add(self)

    def _take(self) -> T:
        with self._lock:
            if self._free:
                return self._free.pop()
        model = self._factory()          # outside the lock: loading is slow and may run in parallel
        with self._lock:
            self.built += 1
        return model

    @contextlib.contextmanager
    def borrow(self) -> Iterator[T]:
        if _mode == "lock":
            with self._call_lock:
                if self._shared is None:
                    self._shared = self._factory()
                    self.built += 1
                yield self._shared
            return
        model = self._take()
        try:
            yield model
        finally:
            with self._lock:
                self._free.append(model)

    def warm(self) -> None:
        """Build one instance now (the up-front check), so a broken model fails before any image."""
        with self.borrow():
            pass

    def clear(self) -> None:
        self._lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._free, self._shared = [], None


class LockedModel(Generic[T]):
    """One instance per key (checkpoint, device) per process; calls serialised by a lock."""

    def __init__(self, name: str, factory: Callable[..., T]) -> None:
        self.name, self._factory = name, factory
        self._lock = threading.Lock()
        self._models: dict[tuple, T] = {}
        _pools.add(self)

    def get(self, *key: object) -> T:
        """Build (once) and return the instance for key, without holding it (for checks)."""
        with self._lock:
            if key not in self._models:
                self._models[key] = self._factory(*key)
            return self._models[key]

    @contextlib.contextmanager
    def borrow(self, *key: object) -> Iterator[T]:
        model = self.get(*key)
        with self._lock:
            yield model

    def clear(self) -> None:
        self._lock = threading.Lock()
        self._models = {}


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
