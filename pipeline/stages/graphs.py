"""Neighbour graphs per feature space -> graphs/<space>.parquet index-similarity lists.

A space names a feature table: action units (35-d intensities + presences, or the 17 intensities),
landmarks (2P-d raw crop pixels, as in LDL-ALSG, or Procrustes-normalised shapes), valence-arousal
(2-d, for LDLVA), or any features table a user supplies. Each row's K nearest neighbours
(pipeline.knn) get the local similarity a_ij = exp(-d_ij^2 / (2 sigma^2)) of LDL-ALSG; sigma is 'auto'
by default for every space (pipeline.knn.similarity: the median distance to the K-th neighbour, so a_ij
spreads between 0 and 1 whatever the crop size or feature units) or a number per space (the paper's 1
for AUs and 68 for 224 px landmark pixels). Graphs cover the training split by default, so no held-out
image is ever a training neighbour. The file metadata records how the graph was built, its recall@K against exact
search on a seeded query sample, and how often neighbours share the clean label.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.contract import tables as artifacts
from pipeline.contract.classes import CANONICAL_CLASSES
from pipeline.contract.errors import ArtifactError, ConfigError, DataError, choices_message
from pipeline.contract.graphs import check_space_name, graph_path, graph_table, write_graph
from pipeline.contract.ranges import SEED_MAX, bounded
from pipeline.knn import KnnConfig, backend_params, build_knn_graph, check_config, recall_at_k
from pipeline.knn.similarity import AUTO_SIGMA, similarity_from_distances, similarity_spread
from pipeline.stages.base import Stage, register_stage

log = logging.getLogger(__name__)
# How long the build and the recall check took: returned to the caller (logs, benches), never written
# into the graph file, whose bytes depend on the inputs only.
TIMING_KEYS = ("build_seconds", "recall_seconds")

STAGE_VERSION = "1.2.0"  # 1.2: sigma 'auto' for every space; a_ij spread in the metadata
BUILTIN_SPACES: tuple[str, ...] = ("au", "au17", "landmarks", "landmarks_procrustes", "va")
DEFAULT_SIGMA: dict[str, float | str] = {space: AUTO_SIGMA for space in BUILTIN_SPACES}
SIMILARITY_FORMULA = "exp(-d^2 / (2 sigma^2))"
DEFAULT_SPACES: tuple[str, ...] = ("au", "landmarks", "va")
SPACE_INPUTS = {"au": artifacts.ACTION_UNITS, "au17": artifacts.ACTION_UNITS, "landmarks": artifacts.LANDMARKS,
                "landmarks_procrustes": artifacts.LANDMARKS, "va": artifacts.SAMPLES}


@dataclass(frozen=True)
class GraphConfig:
    """How graphs are built. `sigma` maps a space to a number or 'auto'; others use `default_sigma`."""

    knn: KnnConfig = field(default_factory=KnnConfig)
    sigma: Mapping[str, float | str] = bounded(default_factory=lambda: dict(DEFAULT_SIGMA), lo=0, lo_open=True)
    default_sigma: float | str = bounded("auto", 0, None, lo_open=True)
    splits: tuple[str, ...] = ("train",)
    recall_queries: int = bounded(1000, 0, 10**7)          # exact queries (seeded) the stored recall@K is measured on
    recall_seed: int = bounded(0, 0, SEED_MAX)
    spaces: tuple[str, ...] = DEFAULT_SPACES   # the prepare builds these (each whose input table exists)

    def sigma_for(self, space: str) -> float | str:
        value = self.sigma.get(space, self.default_sigma)
        if value != "auto" and not (isinstance(value, (int, float)) and value > 0):
            raise ConfigError(f"sigma for space {space!r} must be a positive number or 'auto', got {value!r}")
        return value


# --- features of a space ------------------------------------------------------------------------

TableSource = str | Path | Mapping[str, pa.Table]


def space_features(space: str, source: TableSource | None,
                   splits: Sequence[str] | None = ("train",),
                   user_table: str | Path | pa.Table | None = None,
                   user_columns: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one space -> (sample_ids [N] int64 sorted, features [N, D] float32).

    `source` is a version folder (reads samples/landmarks/action_units.parquet) or a mapping
    {'samples': ..., 'landmarks': ..., 'action_units': ...} of tables. Only samples in `splits`
    (None: all) are kept; rows whose feature vector is null (no landmarks found, ...) are left out
    and counted in the log. NaN/inf inside a present vector is kept, so graph building names it.
    A space outside BUILTIN_SPACES needs `user_table` (a Parquet path or table with sample_id).
    """
    check_space_name(space)
    if space in ("au", "au17"):
        table = _source_table(source, "action_units")
        columns = ["intensity", "presence"] if space == "au" else ["intensity"]
    elif space in ("landmarks", "landmarks_procrustes"):
        table, columns = _source_table(source, "landmarks"), ["points"]
    elif space == "va":
        table, columns = _source_table(source, "samples"), ["valence", "arousal"]
    elif user_table is not None:
        table = user_table if isinstance(user_table, pa.Table) else artifacts.read_table(user_table)
        columns = list(user_columns or [c for c in table.column_names
                                        if c not in ("sample_id", "split", "label")])
    else:
        raise ConfigError(choices_message("graph space", space, BUILTIN_SPACES)
                          + " (or give a user features table for a new space)")
    ids, features = _feature_matrix(table, columns, space)
    if splits is not None and source is not None:
        samples = _source_table(source, "samples")
        keep_ids = samples.column("sample_id").to_numpy()[
            np.isin(samples.column("split").to_numpy(zero_copy_only=False), list(splits))]
        keep = np.isin(ids, keep_ids)
        ids, features = ids[keep], features[keep]
    if space == "landmarks_procrustes":
        features = procrustes_normalise(features)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(features[order])


def _source_table(source: TableSource | None, name: str) -> pa.Table:
    if source is None:
        raise ConfigError(f"space needs the {name} table but no version folder or tables were given")
    if isinstance(source, Mapping):
        if name not in source:
            raise ArtifactError(f"tables given for graph building lack {name!r}; have {sorted(source)}")
        return source[name]
    return artifacts.read_table(Path(source) / f"{name}.parquet")


def _feature_matrix(table: pa.Table, columns: list[str], space: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate vector/numeric columns -> (ids [N], features [N, D]); rows with a null are dropped."""
    artifacts.check_columns(table, ["sample_id", *columns], f"features table of space {space!r}")
    if not columns:
        raise ConfigError(f"space {space!r}: the features table has no feature columns")
    parts, valid = [], np.ones(table.num_rows, dtype=bool)
    for name in columns:
        column = table.column(name)
        valid &= column.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(column.type):
            parts.append(artifacts.vectors_to_numpy(column).astype(np.float32))          # [N, d]
        elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            parts.append(column.to_numpy(zero_copy_only=False).astype(np.float32)[:, None])
        else:
            raise ConfigError(f"space {space!r}: column {name!r} of type {column.type} is not a number "
                              f"or fixed-size vector")
    if not valid.all():
        log.warning("space %s: %d rows without features are left out of the graph", space,
                    int((~valid).sum()))
    ids = table.column("sample_id").to_numpy().astype(np.int64)
    return ids[valid], np.concatenate(parts, axis=1)[valid]                               # [N, D]


def procrustes_normalise(points: np.ndarray, iters: int = 3) -> np.ndarray:
    """[N, 2P] (x, y interleaved) -> shapes centred, scaled to unit norm and rotated onto the mean shape.

    Generalised Procrustes analysis: each shape is aligned to the current mean by the rotation
    (never a reflection) that minimises the squared error, then the mean is re-estimated; `iters` rounds.
    """
    n, two_p = points.shape
    shapes = points.reshape(n, two_p // 2, 2).astype(np.float64)                 # [N, P, 2]
    shapes = shapes - shapes.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(shapes, axis=(1, 2), keepdims=True)                   # [N, 1, 1]
    shapes = shapes / np.where(norms > 0, norms, 1.0)
    reference = shapes.mean(axis=0)                                              # [P, 2]
    for _ in range(iters):
        reference = reference / max(np.linalg.norm(reference), 1e-12)
        cross = np.einsum("npi,pj->nij", shapes, reference)                      # [N, 2, 2]
        u, _, vt = np.linalg.svd(cross)
        flip = np.linalg.det(u @ vt) < 0                                         # [N]
        u[flip, :, 1] *= -1.0
        shapes = shapes @ (u @ vt)                                               # [N, P, 2]
        reference = shapes.mean(axis=0)
    return shapes.reshape(n, two_p).astype(np.float32)


# --- graph building -----------------------------------------------------------------------------

def label_agreement(indices: np.ndarray, labels: np.ndarray) -> dict:
    """Share of neighbours with the same (clean, canonical) label, overall and per class.

    `indices` [N, K] are row positions into `labels` [N]; rows with a negative label are skipped.
    `chance` is the agreement random neighbours would give (sum of squared class shares).
    """
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels >= 0
    same = labels[indices] == labels[:, None]                                    # [N, K]
    if not valid.any():
        return {"overall": None, "per_class": {}, "chance": None}
    classes, counts = np.unique(labels[valid], return_counts=True)
    per_class = {_class_name(c): float(same[labels == c].mean()) for c in classes}
    shares = counts / counts.sum()
    return {"overall": float(same[valid].mean()), "per_class": per_class,
            "chance": float((shares ** 2).sum())}


def _class_name(index: int) -> str:
    return CANONICAL_CLASSES[index] if 0 <= index < len(CANONICAL_CLASSES) else str(int(index))


def build_space_graph(features: np.ndarray, sample_ids: np.ndarray, labels: np.ndarray | None,
                      config: GraphConfig, space: str) -> tuple[pa.Table, dict]:
    """Build one space's graph -> (table in graph_schema(K), metadata for the file).

    `features` [N, D] and `labels` [N] (clean labels, or None) follow `sample_ids` [N]; the table's
    neighbours are sample ids. Recall@K is measured against exact search on a seeded sample.
    """
    check_space_name(space)
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    if len(sample_ids) != len(features) or (labels is not None and len(labels) != len(features)):
        raise DataError(f"space {space!r}: {len(features)} feature rows, {len(sample_ids)} sample ids and "
                        f"{'no' if labels is None else len(labels)} labels must all match")
    if len(sample_ids) and sample_ids.max() >= 2 ** 31:
        raise DataError(f"sample ids up to {sample_ids.max()} do not fit the int32 neighbours column")
    check_config(config.knn, len(features))
    sigma_setting = config.sigma_for(space)
    graph = build_knn_graph(features, config.knn, sample_ids)
    started = time.perf_counter()
    recall = recall_at_k(features, graph.indices, config.knn.metric, config.recall_queries,
                         config.recall_seed)
    recall_seconds = time.perf_counter() - started
    similarity, sigma = similarity_from_distances(graph.distances, sigma_setting)
    table = graph_table(sample_ids, sample_ids[graph.indices], graph.distances, similarity)
    metadata = {
        "space": space, "K": config.knn.k, "metric": config.knn.metric, "sigma": sigma,
        "sigma_mode": "auto" if sigma_setting == "auto" else "config", "similarity": SIMILARITY_FORMULA,
        "similarity_spread": similarity_spread(similarity),
        "backend": graph.backend, "backend_requested": config.knn.backend,
        "backend_params": {**backend_params(graph.config or config.knn), **graph.params},
        "build_seconds": round(graph.seconds, 3), "recall_seconds": round(recall_seconds, 3),
        "recall_at_k": recall, "recall_reference": "exact",
        "recall_queries": min(config.recall_queries, len(features)), "recall_seed": config.recall_seed,
        "n_rows": len(features), "feature_dim": int(np.shape(features)[1]),
        "splits": list(config.splits) if config.splits is not None else None,
        "label_agreement": None if labels is None else label_agreement(graph.indices, labels),
        "stage_version": STAGE_VERSION,
    }
    log.info("graph %s: N=%d K=%d sigma=%.4g recall@%d=%.4f build %.1f s, label agreement %s", space,
             len(features), config.knn.k, sigma, config.knn.k, recall, graph.seconds,
             metadata["label_agreement"] and round(metadata["label_agreement"]["overall"] or 0.0, 4))
    return table, metadata


def build_and_write_space(version_dir: str | Path, space: str, config: GraphConfig = GraphConfig(),
                          user_table: str | Path | pa.Table | None = None,
                          user_columns: Sequence[str] | None = None) -> tuple[Path, dict]:
    """Read a space's features from a version folder, build its graph, write graphs/<space>.parquet."""
    ids, features = space_features(space, version_dir, config.splits, user_table, user_columns)
    samples = artifacts.read_table(Path(version_dir) / artifacts.SAMPLES, columns=["sample_id", "label"])
    labels = _labels_for(samples, ids)
    table, metadata = build_space_graph(features, ids, labels, config, space)
    return write_graph(graph_path(version_dir, space), table, file_metadata(metadata)), metadata


def file_metadata(metadata: dict) -> dict:
    """What a graph file stores: the metadata without TIMING_KEYS (same inputs, same bytes)."""
    return {key: value for key, value in metadata.items() if key not in TIMING_KEYS}


def _labels_for(samples: pa.Table, ids: np.ndarray) -> np.ndarray:
    """Clean labels of `ids` from samples (null, unknown or absent -> -1)."""
    all_ids = samples.column("sample_id").to_numpy().astype(np.int64)
    all_labels = samples.column("label").fill_null(-1).to_numpy().astype(np.int64)
    size = int(max(all_ids.max(initial=-1), ids.max(initial=-1))) + 1
    lookup = np.full(size, -1, dtype=np.int64)                                   # dense sample ids
    lookup[all_ids] = all_labels
    return lookup[ids]


def with_knn(config: GraphConfig, **knn_changes) -> GraphConfig:
    """A copy of `config` with some KnnConfig fields changed (e.g. backend='faiss')."""
    return replace(config, knn=replace(config.knn, **knn_changes))


# --- the registered stage: one call per space present --------------------------------------------------

def resolve_config(fields: dict, spec=None) -> GraphConfig:
    """graphs section: KnnConfig fields (k, backend, metric, ...) and GraphConfig fields (sigma, spaces, ...)."""
    import dataclasses

    from pipeline.contract.config import build_dataclass

    knn_names = {f.name for f in dataclasses.fields(KnnConfig)}
    graph_names = {f.name for f in dataclasses.fields(GraphConfig)} - {"knn"}
    unknown = sorted(set(fields) - knn_names - graph_names)
    if unknown:
        raise ConfigError(choices_message("config key in graphs", unknown[0], sorted(knn_names | graph_names)))
    knn = build_dataclass(KnnConfig, {k: v for k, v in fields.items() if k in knn_names}, "graphs")
    rest = {k: v for k, v in fields.items() if k in graph_names}
    if "sigma" in rest:
        if not isinstance(rest["sigma"], dict):
            raise ConfigError(f"config key 'graphs.sigma': give a mapping of space to sigma, got {rest['sigma']!r}")
        rest["sigma"] = {**DEFAULT_SIGMA, **rest["sigma"]}
    config = build_dataclass(GraphConfig, {**rest, "knn": knn}, "graphs")
    for space in config.spaces:
        check_space_name(space)          # a space names a file: graphs/<space>.parquet
    return config


def spaces_present(version_dir: Path, spaces: Sequence[str]) -> list[str]:
    """The configured spaces whose input table exists (va needs valence/arousal in samples)."""
    import pyarrow.parquet as pq

    present = []
    for space in spaces:
        path = Path(version_dir) / SPACE_INPUTS.get(space, f"features/{space}.parquet")
        if not path.is_file():
            continue
        if space == "va" and "valence" not in pq.read_schema(path).names:
            continue
        present.append(space)
    return present


def build_graph(version_dir: Path, space: str, config: GraphConfig) -> dict:
    """One space's graph file; its metadata (timings included) is returned."""
    _, metadata = build_and_write_space(version_dir, space, config)
    return metadata


def graph_calls(version_dir: Path, config: GraphConfig, spec=None) -> dict:
    return {f"graph-{space}": partial(build_graph, version_dir, space, config)
            for space in spaces_present(version_dir, config.spaces)}


def summarise(results: dict) -> tuple[dict, dict]:
    """(recall@K by space, seconds): build and recall seconds go to the manifest, never the graph file."""
    seconds = {f"{name}-{kind}": results[name][f"{kind}_seconds"] for name in results for kind in ("build", "recall")}
    return {meta["space"]: meta.get("recall_at_k") for meta in results.values()}, seconds


def _report() -> list:
    from pipeline.report import sections

    return [("graphs", "Neighbour graphs", sections.graphs_section)]


PREPARE_STAGE = register_stage(Stage(
    name="graphs", version=STAGE_VERSION, config=GraphConfig, writes=(artifacts.GRAPHS_DIR,),
    after=("action_units", "pseudo_va"), resolve=resolve_config, calls=graph_calls, summarise=summarise,
    report=_report))
