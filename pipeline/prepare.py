"""The whole prepare in plain Python: sources -> faces -> landmarks -> action units [-> pseudo valence-arousal]
-> graphs -> noise -> report -> manifest and lock. No orchestrator is imported here.

How shards run is injected: a `ShardMapper` maps one stage's shard function over its shards. `ShardMapper`
runs them one after another, `ThreadMapper(n)` on n threads, `ProcessMapper(n)` in n worker processes
(pipeline.mappers); without a mapper, the config's `runner` (serial | threads | processes, default
processes: worker processes for stages of at least `process_min_images` pending images, threads below)
and `max_workers` choose one. `flows/prepare.py` adds a Prefect-task mapper (caching, retries,
progress artefacts, Dask through Prefect's task runner). From a notebook:

    from pipeline.config import load_prepare_config
    from pipeline.prepare import ProcessMapper, run_prepare
    summary = run_prepare(load_prepare_config(overrides=["source.n=200"]), ProcessMapper(2))

Every configuration error (a wrong-typed option, a missing checkpoint or binary) fails before any image
is read; per-image stages compute only the shards no stored part holds yet, so a killed run resumes.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from pipeline import assemble
from pipeline.config import (
    PrepareConfig,
    StageConfigs,
    check_backends,
    check_dataset_root,
    resolve_stage_configs,
)
from pipeline.contract.errors import ArtifactError
from pipeline.contract.lock import artifacts_root
from pipeline.contract.storage import require_writable_roots
from pipeline.contract.tables import ACTION_UNITS, LANDMARKS, QUARANTINE, SAMPLES, append_quarantine, write_table
from pipeline.store.parts import PartStore
from pipeline.store.plan import VersionPlan, plan_version, spaces_present, stage_versions, version_is_complete
from pipeline.store.runlock import exclusive_prepare, lock_path

log = logging.getLogger(__name__)
ShardWork = Callable[[pa.Table], int]


class ShardMapper:
    """Runs a prepare's work: shard functions over shards, independent calls, and single steps. Serial."""

    name = "serial"

    def map_shards(self, stage: str, work: ShardWork, shards: list[pa.Table], store_dir: Path,
                   refresh: bool = False) -> Iterator[int]:
        """Run `work` on every shard; yield each shard's image count as it finishes (any order).

        `refresh`: the shards' parts were expected in `store_dir` but are missing, so any cache a mapper
        keeps for them is stale.
        """
        for shard in shards:
            yield work(shard)

    def run_calls(self, stage: str, calls: dict[str, Callable[[], object]]) -> dict[str, object]:
        """Independent calls of one stage (a graph per space, the noise variants): their results by name."""
        return {name: call() for name, call in calls.items()}

    def call(self, stage: str, function: Callable[[], object]) -> object:
        """One step in this process (sources, report)."""
        return function()

    def start(self, stages: StageConfigs) -> None:
        """Called once a run's options and backends have passed their checks, before any shard."""

    def close(self) -> None:
        """Called when the run ends, however it ends: release workers."""


class ThreadMapper(ShardMapper):
    """Shards and independent calls on `max_workers` threads of this process."""

    name = "threads"

    def __init__(self, max_workers: int = 2):
        self.max_workers = max(1, int(max_workers))

    def map_shards(self, stage, work, shards, store_dir, refresh=False):
        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=f"prepare-{stage}")
        try:
            for future in as_completed([pool.submit(work, shard) for shard in shards]):
                yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def run_calls(self, stage, calls):
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=f"prepare-{stage}") as pool:
            futures = {name: pool.submit(call) for name, call in calls.items()}
            return {name: future.result() for name, future in futures.items()}


class ProcessMapper(ThreadMapper):
    """Shards in `max_workers` spawned worker processes, each loading the models once (pipeline.mappers);
    independent calls (graphs, noise) on threads of this process, as ThreadMapper.

    A stage with fewer than `min_images` pending images (or one shard) runs on threads instead: starting
    the workers (spawn, imports, models) takes 1.3-2.5 s here, and processes gain ~2 ms per image over
    threads on the given-box path (bench/results/bench_face_stages.md), so below ~1,000 images they lose.
    """

    name = "processes"

    def __init__(self, max_workers: int = 2, start_method: str = "spawn", min_images: int = 0):
        super().__init__(max_workers)
        self.start_method, self.min_images = start_method, min_images
        self.pool = None

    def start(self, stages):
        from pipeline.mappers import WorkerPool, warm_backends

        if self.pool is None and self.max_workers > 1:      # workers start with the first stage of 2+ shards
            self.pool = WorkerPool(self.max_workers, self.start_method,
                                   partial(warm_backends, stages.align, stages.landmarks, stages.action_units))

    def map_shards(self, stage, work, shards, store_dir, refresh=False):
        if self.pool is None or len(shards) < 2:
            yield from ShardMapper.map_shards(self, stage, work, shards, store_dir, refresh)
            return
        if not self.pool.running and sum(s.num_rows for s in shards) < self.min_images:
            yield from ThreadMapper.map_shards(self, stage, work, shards, store_dir, refresh)
            return
        from pipeline.mappers import map_on_pool

        yield from map_on_pool(self.pool, stage, work, shards)

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make_mapper(config: PrepareConfig) -> ShardMapper:
    """The mapper `config.runner` names, with `config.max_workers` workers."""
    if config.runner == "processes":
        return ProcessMapper(config.max_workers, min_images=config.process_min_images)
    return ThreadMapper(config.max_workers) if config.runner == "threads" else ShardMapper()


# --- work units (module level, so process-based mappers can pickle them) -------------------------

def faces_shard(shard: pa.Table, image_root: Path, config, store_dir: Path) -> int:
    PartStore(store_dir).write(assemble.faces_part(shard, image_root, config))
    return shard.num_rows


def landmarks_shard(shard: pa.Table, faces_dir: Path, config, store_dir: Path) -> int:
    PartStore(store_dir).write(assemble.landmarks_part(shard, upstream_store(shard, "faces", faces_dir), config))
    return shard.num_rows


def action_units_shard(shard: pa.Table, faces_dir: Path, landmarks_dir: Path, config, store_dir: Path) -> int:
    PartStore(store_dir).write(assemble.action_units_part(shard, upstream_store(shard, "faces", faces_dir),
                                                          upstream_store(shard, "landmarks", landmarks_dir), config))
    return shard.num_rows


# --- which upstream parts a shard reads -------------------------------------------------------------
# The parent indexes each upstream store once per stage (PartStore.key_index) and names, in each shard's
# schema metadata, the parts that hold its keys; the shard's work reads only those.

def with_upstream_parts(shards: list[pa.Table], stores: dict[str, PartStore]) -> list[pa.Table]:
    """The shards, each naming (metadata `fer.parts.<label>`) the parts of each upstream store it needs."""
    if not shards:
        return shards
    indexes = {label: store.key_index() for label, store in stores.items()}
    named = []
    for shard in shards:
        keys = shard.column("key").to_pylist()
        metadata = dict(shard.schema.metadata or {})
        for label, index in indexes.items():
            names = sorted({name for key in keys for name in index.get(key, ())})
            metadata[f"fer.parts.{label}".encode()] = json.dumps(names).encode()
        named.append(shard.replace_schema_metadata(metadata))
    return named


def upstream_store(shard: pa.Table, label: str, directory: Path) -> PartStore:
    """The upstream store as this shard needs it: the parts its metadata names, else every part."""
    names = (shard.schema.metadata or {}).get(f"fer.parts.{label}".encode())
    return PartStore(directory, None if names is None else json.loads(names))


def build_graph(version_dir: Path, space: str, graph_config) -> dict:
    from pipeline.stages.graphs import build_and_write_space

    _, metadata = build_and_write_space(version_dir, space, graph_config)
    return metadata


def write_noise(version_dir: Path, variants: tuple[str, ...], num_classes: int) -> list[str]:
    from pipeline.contract.tables import LABELS_DIR, read_table
    from pipeline.stages.noise import write_variant_set

    samples = read_table(version_dir / SAMPLES, columns=["sample_id", "split", "label"])
    return sorted(write_variant_set(version_dir / LABELS_DIR, samples, list(variants), num_classes))


def write_pseudo_va(version_dir: Path, config) -> dict:
    from pipeline.stages.pseudo_va import apply_pseudo_va, checkpoint_hash

    return apply_pseudo_va(version_dir, config, checkpoint_hash(config))


def write_report(version_dir: Path, summary: dict) -> str:
    from pipeline.report.build import build_report

    return str(build_report(version_dir, summary))


# --- the run ----------------------------------------------------------------------------------------

def run_stage(stage: str, work: ShardWork, shards: list[pa.Table], store_dir: Path, mapper: ShardMapper,
              progress: bool = True) -> int:
    """Every pending shard of one per-image stage; afterwards every shard's keys are in the store.

    A shard whose part is missing after its work (a stale orchestrator cache entry, a part deleted by
    hand) runs once more with `refresh`; still missing is an error.
    """
    if not shards:
        return 0
    total = sum(s.num_rows for s in shards)
    done = 0
    with tqdm(total=total, desc=stage, unit="img", disable=not progress) as bar:
        for count in mapper.map_shards(stage, work, shards, store_dir):
            done += count
            bar.update(count)
    for attempt in range(2):
        stored = PartStore(store_dir).done_keys()
        missing = [s for s in shards if not set(s.column("key").to_pylist()) <= stored]
        if not missing:
            return done
        if attempt == 0:
            log.warning("%s: %d shards had no stored part after their work; running them again", stage, len(missing))
            for _ in mapper.map_shards(stage, work, missing, store_dir, refresh=True):
                pass
    raise ArtifactError(f"{stage}: {len(missing)} shards left no part in {store_dir} even after a second run")


def _per_image_stages(config: PrepareConfig, stages: StageConfigs, plan: VersionPlan, source, mapper: ShardMapper,
                      progress: bool) -> dict[str, int]:
    out, samples, size = plan.version_dir, source.samples, config.shard_size
    faces_dir, lm_dir, au_dir = (plan.store_dir(s) for s in ("faces", "landmarks", "action_units"))
    keys = assemble.sample_keys(samples)
    counts = {}
    work = partial(faces_shard, image_root=source.image_root, config=stages.align, store_dir=faces_dir)
    shards = assemble.pending_shards(PartStore(faces_dir), samples, keys, size)
    counts["faces"] = run_stage("faces", work, shards, faces_dir, mapper, progress)
    usable, quarantine = assemble.assemble_faces(PartStore(faces_dir), samples, keys, out, stages.align.crop_size)

    work = partial(landmarks_shard, faces_dir=faces_dir, config=stages.landmarks, store_dir=lm_dir)
    shards = with_upstream_parts(assemble.pending_shards(PartStore(lm_dir), samples, keys, size, only=usable),
                                 {"faces": PartStore(faces_dir)})
    counts["landmarks"] = run_stage("landmarks", work, shards, lm_dir, mapper, progress)
    quarantine += assemble.assemble_table(PartStore(lm_dir), samples, keys, usable, out / LANDMARKS, "landmarks")

    work = partial(action_units_shard, faces_dir=faces_dir, landmarks_dir=lm_dir, config=stages.action_units,
                   store_dir=au_dir)
    shards = with_upstream_parts(assemble.pending_shards(PartStore(au_dir), samples, keys, size, only=usable),
                                 {"faces": PartStore(faces_dir), "landmarks": PartStore(lm_dir)})
    counts["action_units"] = run_stage("action units", work, shards, au_dir, mapper, progress)
    quarantine += assemble.assemble_table(PartStore(au_dir), samples, keys, usable, out / ACTION_UNITS,
                                          "action_units")
    append_quarantine(out / QUARANTINE, quarantine)
    return counts


def _global_stages(stages: StageConfigs, out: Path, mapper: ShardMapper, timings: dict[str, float]) -> dict:
    """Graphs and noise variants; each graph's build and recall seconds go into `timings` (the manifest's
    "seconds"), never into the graph file, whose bytes depend on the inputs only."""
    calls = {f"graph-{space}": partial(build_graph, out, space, stages.graphs)
             for space in spaces_present(out, stages.spaces)}
    calls["noise"] = partial(write_noise, out, stages.noise, stages.spec.num_classes)
    results = mapper.run_calls("graphs and noise", calls)
    for name in calls:
        if name != "noise":
            timings[f"{name}-build"] = results[name]["build_seconds"]
            timings[f"{name}-recall"] = results[name]["recall_seconds"]
    graphs = {results[name]["space"]: results[name].get("recall_at_k") for name in calls if name != "noise"}
    return {"graphs": graphs, "noise": results["noise"]}


def _prepare(config: PrepareConfig, stages: StageConfigs, mapper: ShardMapper, progress: bool) -> dict:
    from pipeline.sources import prepare_source
    from pipeline.sources.base import require_samples
    from pipeline.store import repair
    from pipeline.store.lockfile import ensure_lock, finish_version, samples_metadata

    timings: dict[str, float] = {}
    start = time.perf_counter()
    source = mapper.call("sources", partial(prepare_source, stages.spec, config.root, None,
                                            overrides=stages.source or None, progress=progress))
    timings["sources"] = time.perf_counter() - start
    require_samples(source)
    plan = plan_version(config, stages, source.fingerprint, stage_versions())
    repair.clean_temporaries(plan)
    if version_is_complete(plan) and repair.intact(plan):      # a damaged version is rebuilt below
        ensure_lock(plan)
        repair.point_latest(plan.dataset, plan.version)
        log.info("version %s of %s is complete: nothing to do", plan.version, plan.dataset)
        return {"dataset": plan.dataset, "version": plan.version, "path": str(plan.version_dir),
                "computed": {}, "reused": True, "source": source.summary()}
    out = plan.version_dir
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / SAMPLES, source.samples, samples_metadata(source))
    write_table(out / QUARANTINE, source.quarantine)
    start = time.perf_counter()
    counts = _per_image_stages(config, stages, plan, source, mapper, progress)
    timings["per_image"] = time.perf_counter() - start
    if stages.pseudo_va is not None and stages.pseudo_va.enabled:   # before the graphs: it writes the va space
        start = time.perf_counter()
        counts["pseudo_va"] = mapper.call("pseudo_va", partial(write_pseudo_va, out, stages.pseudo_va))
        timings["pseudo_va"] = time.perf_counter() - start
    start = time.perf_counter()
    counts.update(_global_stages(stages, out, mapper, timings))
    timings["global"] = time.perf_counter() - start
    if config.report:
        start = time.perf_counter()
        mapper.call("report", partial(write_report, out, {"computed": counts, "seconds": dict(timings)}))
        timings["report"] = time.perf_counter() - start
    summary = finish_version(config, stages, plan, source, counts, timings)
    log.info("prepared %s version %s at %s", plan.dataset, plan.version, out)
    return summary


def run_prepare(config: PrepareConfig, mapper: ShardMapper | None = None, progress: bool = True) -> dict:
    """Prepare one dataset version; returns a summary ("dataset", "version", "path", "computed", ...).

    Without `mapper`, `config.runner` picks one (make_mapper). Options and backends are checked first (a
    wrong one fails before any image is read); then the run holds the dataset's prepare lock under the artefact root (another run waits `lock_wait_s`, then
    refuses naming the holder's pid).
    """
    mapper = mapper or make_mapper(config)
    stages = resolve_stage_configs(config)
    check_dataset_root(config, stages)
    check_backends(stages)
    require_writable_roots()                     # a read-only or missing store: one line, before any work
    path = lock_path(artifacts_root(), stages.spec.name)
    with exclusive_prepare(path, f"{stages.spec.name!r} into {path.parent.parent}", config.lock_wait_s):
        try:
            mapper.start(stages)
            return _prepare(config, stages, mapper, progress)
        finally:
            mapper.close()
