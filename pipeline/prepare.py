"""The whole prepare in plain Python: sources -> every registered stage in pipeline order (faces ->
landmarks -> action units [-> pseudo valence-arousal] -> graphs -> noise: pipeline.stages.base) -> report
-> manifest and lock. No orchestrator is imported here.

How shards run is injected: a `ShardMapper` (pipeline.mappers) maps one stage's shard function over its
shards. `ShardMapper` runs them one after another, `ThreadMapper(n)` on n threads, `ProcessMapper(n)` in
n worker processes; without a mapper, the config's `runner` (serial | threads | processes, default
processes: worker processes for stages of at least `process_min_images` pending images, threads below)
and `max_workers` choose one. `flows/prepare.py` adds a Prefect-task mapper (caching, retries, progress
artefacts, Dask through Prefect's task runner). From a notebook:

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
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from pipeline import assemble
from pipeline.config import PrepareConfig, StageConfigs, check_backends, check_dataset_root, resolve_stage_configs
from pipeline.contract.errors import ArtifactError
from pipeline.contract.lock import artifacts_root, is_complete, point_latest, restore_lock, write_version
from pipeline.contract.storage import require_writable_roots
from pipeline.contract.tables import QUARANTINE, SAMPLES, append_quarantine, write_table
from pipeline.mappers import ProcessMapper, ShardMapper, ShardWork, ThreadMapper, make_mapper
from pipeline.store.parts import PartStore
from pipeline.store.plan import VersionPlan, plan_version
from pipeline.stages.base import steps
from pipeline.store.prepare_lock import PrepareLock

log = logging.getLogger(__name__)
__all__ = ["ProcessMapper", "ShardMapper", "ThreadMapper", "make_mapper", "run_prepare"]


# --- the work unit of a per-image stage (module level, so process-based mappers can pickle it) ----------

def shard_work(shard: pa.Table, part: Callable, config, store_dir: Path, upstream: dict[str, Path],
               image_root: Path) -> int:
    """One shard of a per-image stage: its `part` over the upstream parts the shard names, stored as a part."""
    stores = {label: upstream_store(shard, label, directory) for label, directory in upstream.items()}
    PartStore(store_dir).write(part(shard, stores, config, image_root))
    return shard.num_rows


# --- which upstream parts a shard reads -------------------------------------------------------------
# The parent indexes each upstream store once per stage (PartStore.key_index) and names, in each shard's
# schema metadata, the parts that hold its keys; the shard's work reads only those.

def with_upstream_parts(shards: list[pa.Table], stores: dict[str, PartStore]) -> list[pa.Table]:
    """The shards, each naming (metadata `fer.parts.<label>`) the parts of each upstream store it needs."""
    if not shards or not stores:
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


def _per_image_stage(stage, config: PrepareConfig, stages: StageConfigs, plan: VersionPlan, source,
                     keys: list[str], usable: np.ndarray | None, mapper: ShardMapper, progress: bool):
    """Pending shards of one per-image stage, then its assembly: (count, quarantine rows, usable mask)."""
    store_dir, stage_config = plan.store_dir(stage.name), stages.configs[stage.name]
    upstream = {name: plan.store_dir(name) for name in stage.reads}
    work = partial(shard_work, part=stage.part, config=stage_config, store_dir=store_dir, upstream=upstream,
                   image_root=source.image_root)
    shards = assemble.pending_shards(PartStore(store_dir), source.samples, keys, config.shard_size, only=usable)
    shards = with_upstream_parts(shards, {name: PartStore(directory) for name, directory in upstream.items()})
    count = run_stage(stage.name, work, shards, store_dir, mapper, progress)
    quarantine, mask = stage.assemble(PartStore(store_dir), source.samples, keys, usable, plan.version_dir,
                                      stage_config)
    return count, quarantine, (usable if mask is None else mask)


def _global_stages(group: tuple, stages: StageConfigs, out: Path, mapper: ShardMapper,
                   timings: dict[str, float]) -> dict:
    """Global stages that do not read each other: all their calls (one graph per space, the noise variants)
    at once. Seconds a stage reports go into `timings` (the manifest's "seconds"), never into its files,
    whose bytes depend on the inputs only."""
    calls = {stage.name: stage.calls(out, stages.configs[stage.name], stages.spec) for stage in group}
    every = {name: call for own in calls.values() for name, call in own.items()}
    if len(every) < sum(len(own) for own in calls.values()):
        raise ArtifactError(f"stages {[stage.name for stage in group]} name two calls alike: {sorted(every)}")
    results = mapper.run_calls(" and ".join(stage.name for stage in group), every)
    counts = {}
    for stage in group:
        counts[stage.name], seconds = stage.summarise({name: results[name] for name in calls[stage.name]})
        timings.update(seconds)
    return counts


def _run_stages(config: PrepareConfig, stages: StageConfigs, plan: VersionPlan, source, mapper: ShardMapper,
                progress: bool, timings: dict[str, float]) -> dict:
    """Every enabled stage in pipeline order (independent global stages together); per-image quarantine
    rows go to quarantine.parquet before any global stage runs."""
    keys = assemble.sample_keys(source.samples)
    counts, usable = {}, None
    quarantine: list | None = None          # rows of the per-image stages run since the last append
    for group in steps(stages.enabled):
        start = time.perf_counter()
        if group[0].per_image:
            stage = group[0]
            counts[stage.name], rows, usable = _per_image_stage(stage, config, stages, plan, source, keys, usable,
                                                                mapper, progress)
            quarantine = (quarantine or []) + rows
        else:
            quarantine = _append_quarantine(plan.version_dir, quarantine)
            counts.update(_global_stages(group, stages, plan.version_dir, mapper, timings))
        timings["+".join(stage.name for stage in group)] = time.perf_counter() - start
    _append_quarantine(plan.version_dir, quarantine)
    return counts


def _append_quarantine(version_dir: Path, rows: list | None) -> None:
    """The per-image stages' quarantine rows into quarantine.parquet, before any global stage reads it."""
    if rows is not None:
        append_quarantine(version_dir / QUARANTINE, rows)


def _prepare(config: PrepareConfig, stages: StageConfigs, mapper: ShardMapper, progress: bool) -> dict:
    from pipeline.sources import prepare_source
    from pipeline.sources.base import require_samples
    from pipeline.store import repair
    from pipeline.store.record import samples_metadata, version_record

    timings: dict[str, float] = {}
    start = time.perf_counter()
    source = mapper.call("sources", partial(prepare_source, stages.spec, config.root, None,
                                            overrides=stages.source or None, progress=progress))
    timings["sources"] = time.perf_counter() - start
    require_samples(source)
    plan = plan_version(config, stages, source.fingerprint)
    complete = is_complete(plan.version_dir, plan.version)
    repair.clean_temporaries(plan)
    if complete and repair.intact(plan):                # a damaged version is rebuilt below
        restore_lock(plan.version_dir)
        point_latest(plan.dataset, plan.version)
        log.info("version %s of %s is complete: nothing to do", plan.version, plan.dataset)
        return {"dataset": plan.dataset, "version": plan.version, "path": str(plan.version_dir),
                "computed": {}, "reused": True, "source": source.summary()}
    out = plan.version_dir
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / SAMPLES, source.samples, samples_metadata(source))
    write_table(out / QUARANTINE, source.quarantine)
    counts = _run_stages(config, stages, plan, source, mapper, progress, timings)
    if config.report:
        start = time.perf_counter()
        mapper.call("report", partial(write_report, out, {"computed": counts, "seconds": dict(timings)}))
        timings["report"] = time.perf_counter() - start
    summary = {"dataset": plan.dataset, "version": plan.version, "path": str(out), "computed": counts,
               "seconds": timings, "source": source.summary()}
    record = version_record(config, stages, plan, source, summary)
    write_version(out, record)              # manifest.json, then the lock and `latest`: the version is complete
    log.info("prepared %s version %s at %s", plan.dataset, plan.version, out)
    return summary


def run_prepare(config: PrepareConfig, mapper: ShardMapper | None = None, progress: bool = True) -> dict:
    """Prepare one dataset version; returns a summary ("dataset", "version", "path", "computed", ...).

    Without `mapper`, `config.runner` picks one (make_mapper). Options and backends are checked first (a
    wrong one fails before any image is read); then the run holds the dataset's prepare lock under the
    artefact root (store.prepare_lock: another run waits `lock_wait_s`, then refuses naming the holder's pid).
    """
    mapper = mapper or make_mapper(config)
    stages = resolve_stage_configs(config)
    check_dataset_root(config, stages)
    check_backends(stages)
    require_writable_roots()                     # a read-only or missing store: one line, before any work
    with PrepareLock(artifacts_root(), stages.spec.name, config.lock_wait_s):
        try:
            mapper.start(stages)
            return _prepare(config, stages, mapper, progress)
        finally:
            mapper.close()
