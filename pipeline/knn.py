"""K-nearest-neighbour graphs over an [N, D] float32 array, with a measured recall.

Backends (chosen by name in KnnConfig.backend):
  pynndescent  NN-descent on CPU (default; its numba JIT costs 20-40 s once per process, uncached)
  faiss        IVF-Flat (nprobe tuned by default to a target recall on a seeded query sample) or HNSW on
               CPU; with CUDA and faiss-gpu, the IVF index runs on the GPU and index 'flat' is exact GPU search
  exact        blocked brute force in torch (float32 matrix products, candidates re-ranked in float64),
               on CUDA when torch sees a GPU: the reference every graph's recall is measured against

Whatever the backend, the result has the same contract: `indices` [N, K] int64 row positions and
`distances` [N, K] float32 recomputed from the features, a row is never its own neighbour, and each row
is sorted by (distance, index) so ties are broken stably by the lower index. For the cosine metric the
features are L2-normalised, searched with the euclidean metric (same ranking), and `distances` hold
cosine distances 1 - cos(x_i, x_j).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.contract.errors import ConfigError, DataError, choices_message, require_package

log = logging.getLogger(__name__)

STAGE_VERSION = "1.0.0"
BACKENDS: tuple[str, ...] = ("pynndescent", "faiss", "exact")
METRICS: tuple[str, ...] = ("euclidean", "cosine")
FAISS_INDEXES: tuple[str, ...] = ("ivf", "hnsw", "flat")
_TIE_MARGIN = 4             # extra candidates asked of approximate backends, so ties resolve stably
_REFINE_MARGIN = 8          # extra float32 candidates re-ranked in float64 by the exact search
_BLOCK_ELEMENTS = 1 << 25   # distance-matrix elements per block of the exact search (128 MiB float32)


@dataclass(frozen=True)
class KnnConfig:
    """How to build one K-nearest-neighbour graph.

    Backend knobs only apply to their backend; `backend_params()` lists the ones in effect.
    `threads` None leaves each library's own default (all cores).
    """

    k: int = 8
    backend: str = "pynndescent"
    metric: str = "euclidean"
    seed: int = 0
    threads: int | None = None
    # pynndescent: n_neighbors of the NN-descent heap (>= k + 1); more gives higher recall, slower.
    nnd_neighbors: int = 20
    nnd_iters: int | None = None          # None: pynndescent's default max(5, round(log2 N))
    # faiss
    faiss_index: str = "ivf"              # ivf | hnsw | flat (flat = exact, mainly for the GPU)
    ivf_nlist: int | None = None          # None: about 2 * sqrt(N) (1095 at 300K), at most N // 39
    ivf_nprobe: int | str = "auto"        # lists probed per query; 'auto': smallest step reaching target_recall
    target_recall: float = 0.995          # recall@K that nprobe='auto' aims for, on a seeded query sample
    tune_queries: int = 1000              # queries of that sample (drawn with seed + 1)
    ivf_kmeans_iters: int = 10            # k-means iterations of the coarse quantiser
    ivf_train_per_list: int = 64          # k-means trains on at most this many points per list
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    use_gpu: str = "auto"                 # auto | yes | no


@dataclass(frozen=True)
class KnnGraph:
    """A built graph: row i's neighbours are `indices[i]` (row positions, never i itself)."""

    indices: np.ndarray      # [N, K] int64
    distances: np.ndarray    # [N, K] float32 (euclidean, or cosine distance)
    backend: str
    params: dict = field(default_factory=dict)
    seconds: float = 0.0


def check_config(config: KnnConfig, n: int | None = None) -> None:
    """Fail early, with one message, on an unknown backend/metric/index or a K that cannot work."""
    if config.backend not in BACKENDS:
        raise ConfigError(choices_message("KNN backend", config.backend, BACKENDS))
    if config.metric not in METRICS:
        raise ConfigError(choices_message("KNN metric", config.metric, METRICS))
    if config.faiss_index not in FAISS_INDEXES:
        raise ConfigError(choices_message("faiss index", config.faiss_index, FAISS_INDEXES))
    if config.use_gpu not in ("auto", "yes", "no"):
        raise ConfigError(choices_message("use_gpu setting", config.use_gpu, ("auto", "yes", "no")))
    if config.ivf_nprobe != "auto" and not (isinstance(config.ivf_nprobe, int) and config.ivf_nprobe >= 1):
        raise ConfigError(f"ivf_nprobe must be a positive integer or 'auto', got {config.ivf_nprobe!r}")
    if config.k < 1:
        raise ConfigError(f"K must be at least 1, got K={config.k}")
    if n is not None and config.k >= n:
        raise ConfigError(f"K={config.k} neighbours need at least K+1={config.k + 1} points; "
                          f"got N={n}: lower K or add samples")


def prepare_features(features: np.ndarray, metric: str = "euclidean",
                     sample_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """[N, D] -> C-contiguous float32 ready for search; NaN/inf or (cosine) zero rows raise DataError.

    The error names the offending sample ids (row positions when `sample_ids` is None).
    """
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"features must be a non-empty [N, D] array, got shape {x.shape}")
    ids = np.arange(len(x)) if sample_ids is None else np.asarray(sample_ids)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"{int(bad.sum())} feature rows hold NaN or inf; sample_ids "
                        f"{_id_list(ids[bad])}: fix or quarantine them before building a graph")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
        zero = norms[:, 0] == 0
        if zero.any():
            raise DataError(f"cosine distance is undefined for all-zero feature rows; sample_ids "
                            f"{_id_list(ids[zero])}")
        x = np.ascontiguousarray(x / norms)
    return x


def _id_list(ids: np.ndarray, limit: int = 20) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return f"[{shown}{', ...' if len(ids) > limit else ''}]"


def build_knn_graph(features: np.ndarray, config: KnnConfig = KnnConfig(),
                    sample_ids: Sequence[int] | np.ndarray | None = None) -> KnnGraph:
    """Build the K-NN graph of `features` [N, D] with the configured backend (self excluded)."""
    check_config(config, len(features))
    x = prepare_features(features, config.metric, sample_ids)  # [N, D] float32
    import torch  # noqa: F401  (loaded before timing: a one-off import is not build time)

    start = time.perf_counter()
    if config.backend == "exact":
        indices, params = exact_knn(x, config.k), {"block_elements": _BLOCK_ELEMENTS}
        distances = row_distances(x, indices)
    else:
        width = min(config.k + 1 + _TIE_MARGIN, x.shape[0])
        if config.backend == "pynndescent":
            candidates, params = _pynndescent_candidates(x, config, width)
        else:
            candidates, params = _faiss_candidates(x, config, width)
        indices, distances = _best_k(x, candidates, config.k)
    if config.metric == "cosine":
        distances = (0.5 * distances.astype(np.float64) ** 2).astype(np.float32)
    seconds = time.perf_counter() - start
    log.info("KNN graph N=%d D=%d K=%d with %s in %.1f s", x.shape[0], x.shape[1], config.k,
             config.backend, seconds)
    return KnnGraph(indices=indices, distances=distances, backend=config.backend, params=params,
                    seconds=seconds)


def warm_up(config: KnnConfig = KnnConfig()) -> float:
    """Compile the backend's JIT code on a tiny seeded array -> seconds spent.

    pynndescent's numba functions are not cached on disk, so each process pays 20-40 s on its first
    graph; a flow can pay it early (e.g. in a thread while other stages read files).
    """
    start = time.perf_counter()
    if config.backend == "pynndescent":
        tiny = np.random.default_rng(0).normal(size=(max(64, 4 * (config.k + 1)), 3)).astype(np.float32)
        build_knn_graph(tiny, config)
    return time.perf_counter() - start


def backend_params(config: KnnConfig) -> dict:
    """The configuration fields that matter to the chosen backend (for metadata and fingerprints)."""
    every = asdict(config)
    common = {k: every[k] for k in ("k", "backend", "metric", "seed")}
    prefix = {"pynndescent": ("nnd_",), "faiss": ("faiss_", "ivf_", "hnsw_", "use_gpu", "target_recall", "tune_queries"), "exact": ()}
    return {**common, **{k: v for k, v in every.items() if k.startswith(prefix[config.backend])}}


# --- exact search: the reference ---------------------------------------------------------------

def exact_knn(x: np.ndarray, k: int, queries: np.ndarray | None = None,
              exclude_self: bool = True, device: str = "auto") -> np.ndarray:
    """Exact K nearest rows of `x` [N, D] for each query row position ([Q], default all) -> [Q, K] int64.

    Blocks of float32 scores |x|^2 - 2 q.x (squared distance less |q|^2, on centred data) pick K + margin
    candidates with torch.topk; their distances are recomputed in float64 from differences and
    sorted by (distance, index). Self is excluded by position when `exclude_self`. `device` 'auto'
    runs on CUDA when torch sees a GPU, else on the CPU.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    n = x.shape[0]
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    take = min(k + _REFINE_MARGIN, n - (1 if exclude_self else 0))
    data = torch.from_numpy(x).to(device)                                     # [N, D] float32
    centred = data - data.double().mean(dim=0).float()                        # [N, D]
    sq = (centred * centred).sum(dim=1)                                       # [N]
    block = max(1, min(len(rows), _BLOCK_ELEMENTS // n))
    out = torch.empty((len(rows), k), dtype=torch.int64, device=device)
    all_rows = torch.from_numpy(rows).to(device)                              # [Q]
    buffer = torch.empty((block, n), dtype=torch.float32, device=device)      # reused: no page faults
    for start in range(0, len(rows), block):
        q_rows = all_rows[start:start + block]                                # [B]
        # |x|^2 - 2 q.x ranks a row like |q - x|^2 (|q|^2 is constant per row); no [B, N] temporaries.
        d2 = torch.addmm(sq[None, :], centred[q_rows], centred.T, alpha=-2.0,
                         out=buffer[:len(q_rows)])                            # [B, N]
        if exclude_self:
            d2[torch.arange(len(q_rows), device=device), q_rows] = float("inf")
        cand = torch.topk(d2, take, dim=1, largest=False).indices              # [B, take]
        diff = data[cand].double() - data[q_rows].double()[:, None, :]        # [B, take, D]
        cand_dist = diff.pow(2).sum(dim=2)                                    # [B, take] float64
        # (distance, index) order: sort by index, then stably by distance.
        cand, by_index = cand.sort(dim=1)
        cand_dist = cand_dist.gather(1, by_index)
        by_distance = cand_dist.argsort(dim=1, stable=True)
        cand, cand_dist = cand.gather(1, by_distance), cand_dist.gather(1, by_distance)
        out[start:start + block] = cand[:, :k]
        if take < n - (1 if exclude_self else 0):
            # A tie at the K-th distance that reaches the last candidate may continue beyond the
            # candidates: settle those rows over all points.
            for i in torch.nonzero(cand_dist[:, k - 1] >= cand_dist[:, -1]).flatten().tolist():
                out[start + i] = _exact_row(data, int(q_rows[i]), k, exclude_self)
    return out.cpu().numpy()


def _exact_row(data, row: int, k: int, exclude_self: bool):
    """One row's K nearest by (float64 distance, index) over all points (torch, on data's device)."""
    import torch

    d2 = (data.double() - data[row].double()).pow(2).sum(dim=1)               # [N] float64
    if exclude_self:
        d2[row] = float("inf")
    return torch.sort(d2, stable=True).indices[:k]


def row_distances(x: np.ndarray, indices: np.ndarray, rows: np.ndarray | None = None,
                  dtype: type = np.float32, chunk: int = 8192) -> np.ndarray:
    """Euclidean distance from row `rows[i]` (default i) to each of `indices[i]` -> [N, K]."""
    n_rows, k = indices.shape
    rows = np.arange(n_rows) if rows is None else rows
    out = np.empty((n_rows, k), dtype=dtype)
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        origin = x[rows[start:stop]].astype(dtype)[:, None, :]        # [C, 1, D]
        diff = x[indices[start:stop]].astype(dtype) - origin          # [C, K, D]
        out[start:stop] = np.sqrt(np.einsum("ckd,ckd->ck", diff, diff))
    return out


def sort_rows(indices: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index): a stable tie-break on the lower index."""
    by_index = np.argsort(indices, axis=1, kind="stable")
    indices = np.take_along_axis(indices, by_index, axis=1)
    distances = np.take_along_axis(distances, by_index, axis=1)
    by_distance = np.argsort(distances, axis=1, kind="stable")
    return (np.take_along_axis(indices, by_distance, axis=1),
            np.take_along_axis(distances, by_distance, axis=1))


def _best_k(x: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, M] backend candidates (may hold the row itself, -1 or repeats) -> the K best by (distance, index).

    Rows left with fewer than K distinct neighbours are searched exactly.
    """
    n = candidates.shape[0]
    candidates = np.where(candidates == np.arange(n)[:, None], -1, candidates.astype(np.int64))  # [N, M]
    distances = row_distances(x, np.maximum(candidates, 0))                                 # [N, M]
    distances[candidates < 0] = np.inf
    candidates, distances = sort_rows(candidates, distances)
    repeated = (candidates[:, 1:] == candidates[:, :-1]) & (candidates[:, 1:] >= 0)
    indices, distances = candidates[:, :k], distances[:, :k]
    bad = (indices < 0).any(axis=1) | repeated.any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        log.warning("%d rows lacked K distinct neighbours from the backend; searched exactly", len(rows))
        indices[rows] = exact_knn(x, k, queries=rows)
        distances[rows] = row_distances(x, indices[rows], rows)
    return indices, distances


# --- approximate backends ----------------------------------------------------------------------

def _pynndescent_candidates(x: np.ndarray, config: KnnConfig, width: int) -> tuple[np.ndarray, dict]:
    """NN-descent graph, its first `width` columns (usually self first)."""
    pynndescent = require_package("pynndescent", "pynndescent")
    n_neighbors = min(max(config.nnd_neighbors, width), x.shape[0])
    index = pynndescent.NNDescent(
        x, metric="euclidean", n_neighbors=n_neighbors, random_state=config.seed,
        n_iters=config.nnd_iters, n_jobs=config.threads, low_memory=True, verbose=False)
    neighbors, _ = index.neighbor_graph                       # [N, n_neighbors] int
    params = {"n_neighbors": n_neighbors, "n_iters": index.n_iters, "n_trees": index.n_trees,
              "version": getattr(pynndescent, "__version__", "unknown")}
    return np.asarray(neighbors[:, :width]), params


def _faiss_candidates(x: np.ndarray, config: KnnConfig, width: int) -> tuple[np.ndarray, dict]:
    """faiss search of every row for `width` neighbours, on the GPU when asked/available."""
    faiss = require_package("faiss", "faiss-cpu (or faiss-gpu-cu12 for CUDA)")
    if config.threads is not None:
        faiss.omp_set_num_threads(config.threads)
    gpu = _faiss_gpu_available(faiss)
    if config.use_gpu == "yes" and not gpu:
        raise ConfigError("use_gpu='yes' but faiss sees no GPU: install faiss-gpu-cu12 on a CUDA machine "
                          "or set use_gpu to 'auto'/'no'")
    gpu = gpu and config.use_gpu != "no" and config.faiss_index != "hnsw"  # faiss has no GPU HNSW
    index, params = _faiss_index(faiss, x, config)
    params.update(index=config.faiss_index, gpu=gpu, version=faiss.__version__)
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    if "nprobe" in params:
        space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
        if params["nprobe"] == "auto":
            params["nprobe"], params["nprobe_tuning"] = _tune_nprobe(
                lambda p: space.set_index_parameter(index, "nprobe", p), index, x, config, width,
                params["nlist"])
        space.set_index_parameter(index, "nprobe", params["nprobe"])
    _, neighbors = index.search(x, width)                      # [N, width] int64, -1 when short
    return neighbors, params


def _tune_nprobe(set_nprobe, index, x: np.ndarray, config: KnnConfig, width: int,
                 nlist: int) -> tuple[int, list]:
    """Smallest nprobe in a geometric ladder whose recall@K on a seeded query sample reaches the target.

    The sample (seed + 1) differs from the one the stored recall is measured on (seed of the caller).
    Returns (nprobe, [[nprobe, sample recall], ...]).
    """
    rows = recall_sample(x.shape[0], config.tune_queries, config.seed + 1)            # [Q]
    exact = exact_knn(x, config.k, queries=rows)                                       # [Q, K]
    kth = row_distances(x, exact[:, -1:], rows, dtype=np.float64)[:, 0]                # [Q]
    ladder = [p for p in (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256) if p < nlist] + [nlist]
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


def _faiss_index(faiss, x: np.ndarray, config: KnnConfig) -> tuple[object, dict]:
    """An untrained CPU faiss index for `config.faiss_index`, and the parameters it uses."""
    n, dim = x.shape
    if config.faiss_index == "flat":
        return faiss.IndexFlatL2(dim), {}
    if config.faiss_index == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = max(config.hnsw_ef_search, config.k + 1 + _TIE_MARGIN)
        return index, {"m": config.hnsw_m, "ef_construction": config.hnsw_ef_construction,
                       "ef_search": index.hnsw.efSearch}
    nlist = config.ivf_nlist or int(2 * np.sqrt(n))
    nlist = int(np.clip(nlist, 1, max(1, n // 39)))            # faiss wants >= 39 points per list
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    index.cp.seed = config.seed
    index.cp.niter = config.ivf_kmeans_iters
    index.cp.max_points_per_centroid = config.ivf_train_per_list
    nprobe = config.ivf_nprobe if config.ivf_nprobe == "auto" else min(int(config.ivf_nprobe), nlist)
    return index, {"nlist": nlist, "nprobe": nprobe,
                   "kmeans_iters": config.ivf_kmeans_iters, "train_per_list": config.ivf_train_per_list}


def _faiss_gpu_available(faiss) -> bool:
    """True when this faiss build has GPU support and sees a CUDA device."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the faiss build
        return False


# --- recall measured against exact search ------------------------------------------------------

def recall_sample(n: int, n_queries: int, seed: int) -> np.ndarray:
    """Seeded, sorted sample of query rows for recall measurement ([min(n_queries, N)])."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n_queries, n), replace=False))


def recall_at_k(features: np.ndarray, indices: np.ndarray, metric: str = "euclidean",
                n_queries: int = 2000, seed: int = 0) -> float:
    """Recall@K of a graph against exact search on a seeded sample of query rows.

    Tie-tolerant: a returned neighbour counts as found when its exact distance is no greater than the
    exact K-th neighbour's distance, so equally distant points are interchangeable.
    """
    x = prepare_features(features, metric)
    k = indices.shape[1]
    queries = recall_sample(len(x), n_queries, seed)
    exact = exact_knn(x, k, queries=queries)                                 # [Q, K]
    kth = row_distances(x, exact[:, -1:], queries, dtype=np.float64)[:, 0]   # [Q]
    got = row_distances(x, indices[queries], queries, dtype=np.float64)      # [Q, K]
    not_self = indices[queries] != queries[:, None]
    found = (got <= kth[:, None] * (1 + 1e-9) + 1e-12) & not_self
    return float(found.sum() / found.size)


def clustered_points(n: int, dim: int, clusters: int = 64, intrinsic_dim: int = 16,
                     noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """Seeded clustered data for tests and benchmarks -> [n, dim] float32.

    A Gaussian mixture: cluster sizes from a Dirichlet, centres N(0, 4^2 I), each cluster spread along
    its own random `intrinsic_dim`-dimensional subspace (unit variance per latent axis, scaled per
    cluster by 0.5..1.5) plus isotropic noise of std `noise`, like shapes and AU profiles that vary
    along a few modes. Not a model of any real dataset.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n, rng.dirichlet(np.full(clusters, 2.0)))
    latent = min(intrinsic_dim, dim)
    parts = []
    for c, size in enumerate(sizes):
        centre = rng.normal(0.0, 4.0, size=dim)                                    # [D]
        basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T                   # [L, D]
        scale = rng.uniform(0.5, 1.5)
        z = rng.normal(size=(size, latent)) * scale                                # [S, L]
        parts.append(centre + z @ basis + rng.normal(0.0, noise, size=(size, dim)))  # [S, D]
    points = np.concatenate(parts).astype(np.float32)
    return points[rng.permutation(n)]
