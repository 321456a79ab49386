"""Library approximate backends: faiss (IVF / HNSW / flat, on the GPU when faiss-gpu sees one) and pynndescent.

Both libraries are imported inside the backend, so `import pipeline` stays fast and a missing package
gives a message naming it.
"""
from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import warnings

import numpy as np

from pipeline.contract.errors import ConfigError, require_package
from pipeline.contract.registry import Registry
from pipeline.knn.backends import TIE_MARGIN, KnnBackend, register_backend
from pipeline.knn.blocked import ivf_nlist
from pipeline.knn.exact import exact_knn, row_distances

log = logging.getLogger(__name__)

FAISS_NPROBE_LADDER = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
FAISS_INDEXES: Registry = Registry("faiss index")


@FAISS_INDEXES.register("flat")
def _flat_index(faiss, x: np.ndarray, config) -> tuple[object, dict]:
    return faiss.IndexFlatL2(x.shape[1]), {}


@FAISS_INDEXES.register("hnsw")
def _hnsw_index(faiss, x: np.ndarray, config) -> tuple[object, dict]:
    index = faiss.IndexHNSWFlat(x.shape[1], config.hnsw_m)
    index.hnsw.efConstruction = config.hnsw_ef_construction
    index.hnsw.efSearch = max(config.hnsw_ef_search, config.k + 1 + TIE_MARGIN)
    return index, {"m": config.hnsw_m, "ef_construction": config.hnsw_ef_construction,
                   "ef_search": index.hnsw.efSearch, "gpu_capable": False}


@FAISS_INDEXES.register("ivf")
def _ivf_index(faiss, x: np.ndarray, config) -> tuple[object, dict]:
    n, dim = x.shape
    nlist = ivf_nlist(n, config.ivf_nlist)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    index.cp.seed = config.seed
    index.cp.niter = config.ivf_kmeans_iters
    index.cp.max_points_per_centroid = config.ivf_train_per_list
    nprobe = config.ivf_nprobe if config.ivf_nprobe == "auto" else min(int(config.ivf_nprobe), nlist)
    return index, {"nlist": nlist, "nprobe": nprobe, "kmeans_iters": config.ivf_kmeans_iters,
                   "train_per_list": config.ivf_train_per_list}


@register_backend("faiss")
class FaissBackend(KnnBackend):
    """faiss index (KnnConfig.faiss_index) built on the rows and searched with them; GPU when available."""

    config_fields = ("faiss_index", "ivf_nlist", "ivf_nprobe", "target_recall", "tune_queries",
                     "ivf_kmeans_iters", "ivf_train_per_list", "hnsw_m", "hnsw_ef_construction",
                     "hnsw_ef_search", "use_gpu")

    @classmethod
    def check(cls, config) -> None:
        FAISS_INDEXES.get(config.faiss_index)

    def search(self, x: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        faiss = require_package("faiss", "faiss-cpu (or faiss-gpu-cu12 for CUDA)")
        if config.threads is not None:
            faiss.omp_set_num_threads(config.threads)
        gpu = _faiss_gpu_available(faiss)
        if config.use_gpu == "yes" and not gpu:
            raise ConfigError("use_gpu='yes' but faiss sees no GPU: install faiss-gpu-cu12 on a CUDA machine "
                              "or set use_gpu to 'auto'/'no'")
        index, params = FAISS_INDEXES.get(config.faiss_index)(faiss, x, config)
        gpu = gpu and config.use_gpu != "no" and params.pop("gpu_capable", True)
        params.update(index=config.faiss_index, gpu=gpu, version=faiss.__version__)
        if gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        if not index.is_trained:
            index.train(x)
        index.add(x)
        if "nprobe" in params:
            space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
            if params["nprobe"] == "auto":
                params["nprobe"], params["nprobe_tuning"] = _tune_faiss_nprobe(
                    lambda p: space.set_index_parameter(index, "nprobe", p), index, x, config, width,
                    params["nlist"])
            space.set_index_parameter(index, "nprobe", params["nprobe"])
        self.params = params
        return index.search(x, width)                          # ([N, width] float32, [N, width] int64)


def _tune_faiss_nprobe(set_nprobe, index, x: np.ndarray, config, width: int, nlist: int) -> tuple[int, list]:
    """Smallest nprobe of a geometric ladder whose recall@K on a seeded query sample reaches the target.

    The sample (seed + 1) differs from the one the stored recall is measured on.
    Returns (nprobe, [[nprobe, sample recall], ...]).
    """
    from pipeline.knn.recall import recall_sample

    rows = recall_sample(x.shape[0], config.tune_queries, config.seed + 1)            # [Q]
    exact = exact_knn(x, config.k, queries=rows)                                       # [Q, K]
    kth = row_distances(x, exact[:, -1:], rows, dtype=np.float64)[:, 0]                # [Q]
    ladder = [p for p in FAISS_NPROBE_LADDER if p < nlist] + [nlist]
    history = []
    for nprobe in ladder:
        set_nprobe(nprobe)
        _, cand = index.search(x[rows], width)                                         # [Q, width]
        cand = np.where(cand == rows[:, None], -1, cand)
        dist = row_distances(x, np.maximum(cand, 0), rows, dtype=np.float64)           # [Q, width]
        dist[cand < 0] = np.inf
        best = np.sort(dist, axis=1)[:, :config.k]                                     # [Q, K]
        recall = float((best <= kth[:, None] * (1 + 1e-9) + 1e-12).mean())
        history.append([nprobe, round(recall, 5)])
        if recall >= config.target_recall:
            break
    log.info("faiss IVF nprobe tuning (nprobe, sample recall@%d): %s", config.k, history)
    return history[-1][0], history


def _faiss_gpu_available(faiss) -> bool:
    """True when this faiss build has GPU support and sees a CUDA device."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the faiss build
        return False


@register_backend("pynndescent")
class PynndescentBackend(KnnBackend):
    """NN-descent (pynndescent, numba). Its compiled code is cached on disk where numba can cache it."""

    config_fields = ("nnd_neighbors", "nnd_iters", "nnd_trees", "nnd_cache")

    def search(self, x: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        pynndescent = import_pynndescent(config.nnd_cache)
        n_neighbors = min(max(config.nnd_neighbors, width), x.shape[0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Cannot cache compiled function.*")
            index = pynndescent.NNDescent(
                x, metric="euclidean", n_neighbors=n_neighbors, random_state=config.seed,
                n_trees=config.nnd_trees, n_iters=config.nnd_iters, n_jobs=config.threads,
                low_memory=True, verbose=False)
            neighbors, distances = index.neighbor_graph                  # [N, n_neighbors]
        self.params = {"n_neighbors": n_neighbors, "n_iters": index.n_iters, "n_trees": index.n_trees,
                       "version": getattr(pynndescent, "__version__", "unknown"),
                       "numba_cache_dir": _numba_cache_dir() if config.nnd_cache else None}
        return np.asarray(distances[:, :width]) ** 2, np.asarray(neighbors[:, :width])


def _numba_cache_dir() -> str:
    from pipeline.contract.lock import cache_root

    return os.environ.get("NUMBA_CACHE_DIR") or str(cache_root() / "numba")


def import_pynndescent(cache: bool = True):
    """Import pynndescent; with `cache`, numba keeps its compiled code under $FER_CACHE/numba.

    pynndescent marks only some of its numba functions cache=True; the others are switched to the
    on-disk cache too (numba's Dispatcher.enable_caching). Functions that take another compiled
    function as an argument (nn_descent itself) cannot be cached by numba and still compile once
    per process (~15 s on 2 cores). NUMBA_CACHE_DIR, when set, wins.
    """
    if cache:
        numba = require_package("numba", "numba (installed with pynndescent)")
        if not os.environ.get("NUMBA_CACHE_DIR"):
            numba.config.CACHE_DIR = _numba_cache_dir()
    pynndescent = require_package("pynndescent", "pynndescent")
    if cache:
        _enable_numba_caching(pynndescent)
    return pynndescent


def _enable_numba_caching(package) -> int:
    """Turn on numba's disk cache for every uncached dispatcher in `package`'s modules -> how many."""
    from numba.core.registry import CPUDispatcher

    enabled = 0
    for info in pkgutil.iter_modules(package.__path__):
        try:
            module = importlib.import_module(f"{package.__name__}.{info.name}")
        except ImportError:                                   # pragma: no cover - optional submodules
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, CPUDispatcher) and type(getattr(obj, "_cache", None)).__name__ == "NullCache":
                obj.enable_caching()
                enabled += 1
    return enabled
