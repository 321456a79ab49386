"""KnnConfig, its checks, and the measured rule behind backend='auto'.

The 'auto' rule picks per feature space from its size alone (so the same input always resolves the same
way): exact search up to AUTO_EXACT_MAX_N points, else the blocked IVF search in the full space, for
the 35-d AU and the 136-d landmark space alike. PCA stays an option (pca_dim), not a default: on the
benchmark's clustered 136-d data 32 components kept too little of the neighbour structure. The numbers
behind the rule come from bench/bench_knn.py on 2 CPU cores (bench/results/knn.json; README "How fast").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from pipeline.contract.errors import ConfigError, choices_message
from pipeline.contract.ranges import bounded

METRICS: tuple[str, ...] = ("euclidean", "cosine")
AUTO = "auto"
AUTO_EXACT_MAX_N = 20_000      # exact blocked search costs ~N^2 D: at 20K x 136-d a few seconds on 2 cores


@dataclass(frozen=True)
class KnnConfig:
    """How to build one K-nearest-neighbour graph.

    Backend knobs only apply to their backend; `backend_params()` lists the ones in effect.
    `threads` None leaves each library's own default (all cores); results do not depend on it.
    """

    k: int = bounded(8, 1, 4096)
    backend: str = AUTO                   # auto | blocked-ivf | exact | pynndescent | faiss
    metric: str = "euclidean"
    seed: int = bounded(0, 0, 2**31 - 1)   # faiss's k-means seed is a C int
    threads: int | None = bounded(None, 1, 4096)
    # PCA pre-step for approximate backends: search in `pca_dim` components for `pca_width`
    # candidates per row, re-ranked by exact distance in the full space. None: no PCA.
    pca_dim: int | None = bounded(None, 1, 65_536)
    pca_width: int = bounded(32, 1, 1_000_000)
    pca_sample: int = bounded(50_000, 1, 10**9)             # rows (seeded) the principal axes are fitted on
    # IVF (blocked-ivf and faiss ivf): k-means cells and how many nearest cells each query probes
    ivf_nlist: int | None = bounded(None, 1, 10**8)   # None: blocked-ivf 2 sqrt(N) (1095 at 300K), faiss 4 sqrt(N)
    ivf_nprobe: int | str = bounded("auto", 1, 10**8)       # 'auto': smallest ladder step reaching target_recall on a sample
    target_recall: float = bounded(0.995, 0, 1, lo_open=True)   # recall@K nprobe='auto' aims for (seeded sample)
    tune_queries: int = bounded(500, 1, 10**7)              # queries of that sample (drawn with seed + 1)
    ivf_kmeans_iters: int = bounded(6, 1, 10_000)            # k-means iterations of the coarse quantiser
    ivf_train_per_list: int = bounded(16, 1, 10**6)         # k-means trains on at most this many points per cell
    # pynndescent: n_neighbors of the NN-descent heap (>= k + 1); more gives higher recall, slower.
    nnd_neighbors: int = bounded(20, 2, 4096)
    nnd_iters: int | None = bounded(None, 1, 10_000)         # None: pynndescent's default max(5, round(log2 N))
    nnd_trees: int | None = bounded(None, 1, 10_000)         # None: pynndescent's default
    nnd_cache: bool = True                # keep numba's compiled code under $FER_CACHE/numba
    # faiss
    faiss_index: str = "ivf"              # ivf | hnsw | flat (flat = exact, mainly for the GPU)
    hnsw_m: int = bounded(32, 2, 4096)
    hnsw_ef_construction: int = bounded(80, 1, 10**6)
    hnsw_ef_search: int = bounded(128, 1, 10**6)
    use_gpu: str = "auto"                 # auto | yes | no (faiss and the torch searches)


def backend_names() -> tuple[str, ...]:
    from pipeline.knn.backends import BACKENDS

    return (AUTO, *BACKENDS.names())


def check_config(config: KnnConfig, n: int | None = None) -> None:
    """Fail early, with one message, on an unknown backend/metric/index or a K that cannot work."""
    from pipeline.knn.backends import BACKENDS

    if config.backend != AUTO:
        if config.backend not in BACKENDS:
            raise ConfigError(choices_message("KNN backend", config.backend, backend_names()))
        BACKENDS.get(config.backend).check(config)
    if config.metric not in METRICS:
        raise ConfigError(choices_message("KNN metric", config.metric, METRICS))
    if config.use_gpu not in ("auto", "yes", "no"):
        raise ConfigError(choices_message("use_gpu setting", config.use_gpu, ("auto", "yes", "no")))
    if config.ivf_nprobe != "auto" and not (isinstance(config.ivf_nprobe, int) and config.ivf_nprobe >= 1):
        raise ConfigError(f"ivf_nprobe must be a positive integer or 'auto', got {config.ivf_nprobe!r}")
    if config.pca_dim is not None and not (isinstance(config.pca_dim, int) and config.pca_dim >= 1):
        raise ConfigError(f"pca_dim must be a positive integer or None, got {config.pca_dim!r}")
    if config.k < 1:
        raise ConfigError(f"K must be at least 1, got K={config.k}")
    if config.pca_width < config.k:
        raise ConfigError(f"pca_width={config.pca_width} must be at least K={config.k}")
    if n is not None and config.k >= n:
        raise ConfigError(f"K={config.k} neighbours need at least K+1={config.k + 1} points; "
                          f"got N={n}: lower K or add samples")


def resolve(config: KnnConfig, n: int, dim: int) -> KnnConfig:
    """backend='auto' -> a concrete backend for [n, dim] features (shape only: deterministic)."""
    if config.backend != AUTO:
        return config
    return replace(config, backend="exact" if n <= AUTO_EXACT_MAX_N else "blocked-ivf")


def backend_params(config: KnnConfig) -> dict:
    """The configuration fields that matter to the chosen backend (for metadata and fingerprints)."""
    from pipeline.knn.backends import BACKENDS

    every = asdict(config)
    common = {key: every[key] for key in ("k", "backend", "metric", "seed")}
    if config.backend == AUTO:
        return {**common, **{key: every[key] for key in every if key not in common and key != "threads"}}
    fields = BACKENDS.get(config.backend).config_fields
    if config.pca_dim is not None and BACKENDS.get(config.backend).margin:
        fields = (*fields, "pca_dim", "pca_width", "pca_sample")
    return {**common, **{key: every[key] for key in fields}}
