"""The KNN backend registry and the interface every backend implements.

faiss.contrib style: a backend takes a C-contiguous float32 array [N, D] and returns (D, I), each
[N, width]: squared euclidean distances (informational; or, where `exact_distances`, the euclidean
distances pipeline.knn.kernels.pair_distances measures, reused as they are) and int64 row positions of
candidate neighbours, where a row may list itself, repeats or -1 (short rows). `pipeline.knn.core` turns any
backend's candidates into the contract (self excluded, distances recomputed, (distance, index) order),
so an approximate backend only has to find the right rows. The `exact` backend is the reference every
approximation's recall is measured against.

Adding a backend is one decorated class:

    @register_backend("annoy")
    class AnnoyBackend(KnnBackend):
        config_fields = ("annoy_trees",)
        def search(self, x, width): ...
"""
from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from pipeline.contract.registry import Registry

TIE_MARGIN = 4      # extra candidates asked of approximate backends, so ties and rounding resolve stably


class KnnBackend(abc.ABC):
    """Base class: `search(x, width) -> (D, I)` over the rows of x (self-join)."""

    config_fields: ClassVar[tuple[str, ...]] = ()   # KnnConfig fields that matter to this backend
    margin: ClassVar[int] = TIE_MARGIN              # 0: the backend's results are exact and final
    exact_distances: ClassVar[bool] = False         # D holds euclidean distances as pair_distances measures

    def __init__(self, config) -> None:
        self.config = config
        self.params: dict = {}                      # what the search used (nlist, nprobe, versions ...)

    @classmethod
    def check(cls, config) -> None:
        """Raise ConfigError on settings this backend cannot use (called before any work)."""

    @abc.abstractmethod
    def search(self, x: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """[N, D] float32 -> (D [N, width] distances, I [N, width] int64 row indices, self excluded)."""


BACKENDS: Registry[type[KnnBackend]] = Registry("KNN backend")
register_backend = BACKENDS.register


def torch_device(use_gpu: str) -> str:
    """'cuda' when torch sees a GPU and use_gpu is not 'no' (an unmet 'yes' raises), else 'cpu'."""
    import torch

    from pipeline.contract.errors import ConfigError

    available = torch.cuda.is_available()
    if use_gpu == "yes" and not available:
        raise ConfigError("use_gpu='yes' but torch sees no CUDA device: run on a GPU machine "
                          "or set use_gpu to 'auto'/'no'")
    return "cuda" if available and use_gpu != "no" else "cpu"


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run a block with torch's intra-op thread count set to `threads` (None: leave it)."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def workers(threads: int | None) -> int:
    """Worker threads for a search: `threads`, or every core."""
    return max(1, threads or os.cpu_count() or 1)


def run_parallel(tasks: Iterable[Callable[[], None]], threads: int | None) -> None:
    """Run independent tasks (each writes its own rows) on `threads` worker threads, torch at 1 thread each.

    The tasks release the GIL inside torch and the compiled kernels; results never depend on how
    many threads ran them.
    """
    count = workers(threads)
    with torch_threads(1):
        if count == 1:
            for task in tasks:
                task()
            return
        with ThreadPoolExecutor(count) as pool:
            for future in [pool.submit(task) for task in tasks]:
                future.result()
