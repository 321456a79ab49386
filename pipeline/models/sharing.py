"""Thread- and process-safe access to models that must not be called by two threads at once.

dlib's HOG detector keeps scratch state inside the object: two task threads sharing one cached detector
changed 10 of 40 boxes. Every per-image backend therefore borrows its model:

    with HOG_DETECTORS.borrow() as detector:
        detector.run(image, 1, 0.0)

A `ModelPool` runs in one of two ways, chosen per model from measurements (bench/bench_face_stages.py,
"gil" and "sharing_*" in bench/results/bench_face_stages.json):
- "pool": each concurrent caller gets its own instance (a free one, else a new one from the factory,
  returned to the free list afterwards): at most one instance per thread in flight, and a thread pool
  that is recreated (each prepare stage, a new Dask worker thread) reuses instances already built. Used
  for the HOG detector: dlib releases the GIL inside it, so two threads detect in parallel, and an
  instance costs 1 MB (0.4 s to build).
- "lock": one instance, calls serialised. Used for the 68-point predictor: dlib holds the GIL inside it,
  so concurrent calls could not overlap anyway, and each instance would cost 80 MB (0.9 s to build).
`set_mode("pool" | "lock")` forces one way for every pool (the benchmark compares them); "default" restores
the per-model choice. Torch models use `LockedModel`: one instance per (checkpoint, device) per process,
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
MODES = ("default", "pool", "lock")
_mode = "default"
_pools: weakref.WeakSet = weakref.WeakSet()


def set_mode(mode: str) -> None:
    """Force one sharing way on every ModelPool in this process ("default": each its own); clears instances."""
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

    def __init__(self, name: str, factory: Callable[[], T], way: str = "pool") -> None:
        if way not in MODES[1:]:
            raise ConfigError(choices_message("model sharing way", way, MODES[1:]))
        self.name, self._factory, self.way = name, factory, way
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
        if (self.way if _mode == "default" else _mode) == "lock":
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
