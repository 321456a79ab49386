"""The prepare flow: sources -> faces -> landmarks -> action units -> graphs -> noise -> report -> lock.

Thin by design: every task calls one pipeline function. Per-image stages run as one task per shard
(`shard_size` images), only for shards whose results are not stored yet, with retries on I/O errors and
Prefect caching keyed on the pipeline's fingerprints. A rerun with nothing changed returns the same
version id at once; a run killed midway resumes from its finished shards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from tqdm.auto import tqdm

from pipeline import assemble, prepare
from pipeline.contract.lock import write_lock
from pipeline.contract.tables import (
    ACTION_UNITS,
    LANDMARKS,
    MANIFEST,
    QUARANTINE,
    SAMPLES,
    append_quarantine,
    write_table,
)
from pipeline.sources import SourceResult, prepare_source
from pipeline.store.parts import PartStore

log = logging.getLogger(__name__)


def _cache_key(context, parameters) -> str:
    return parameters["cache_key"]


def _shard_cache_key(store_dir: Path, shard) -> str:
    """Prefect cache key of one shard task: its output store (named by the stage fingerprint) and its keys.

    The store's path is part of the key, so a cache hit always means the part exists in that store.
    """
    text = "\n".join([str(store_dir), *shard.column("key").to_pylist()])
    return f"{store_dir.name}-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


@task(name="sources", retries=1, retry_delay_seconds=2)
def sources_task(config: prepare.PrepareConfig, spec) -> SourceResult:
    return prepare_source(spec, config.root, None, overrides=config.source or None, progress=False)


@task(name="faces-shard", retries=2, retry_delay_seconds=2, retry_condition_fn=None,
      cache_key_fn=_cache_key, persist_result=True, result_serializer="json")
def faces_shard_task(shard, image_root: Path, align_config, store_dir: Path, cache_key: str) -> int:
    PartStore(store_dir).write(assemble.faces_part(shard, image_root, align_config))
    return shard.num_rows


@task(name="landmarks-shard", retries=2, retry_delay_seconds=2,
      cache_key_fn=_cache_key, persist_result=True, result_serializer="json")
def landmarks_shard_task(shard, faces_dir: Path, landmark_config, store_dir: Path, cache_key: str) -> int:
    PartStore(store_dir).write(assemble.landmarks_part(shard, PartStore(faces_dir), landmark_config))
    return shard.num_rows


@task(name="action-units-shard", retries=2, retry_delay_seconds=2,
      cache_key_fn=_cache_key, persist_result=True, result_serializer="json")
def action_units_shard_task(shard, faces_dir: Path, landmarks_dir: Path, au_config, store_dir: Path,
                            cache_key: str) -> int:
    part = assemble.action_units_part(shard, PartStore(faces_dir), PartStore(landmarks_dir), au_config)
    PartStore(store_dir).write(part)
    return shard.num_rows


@task(name="graph", retries=1)
def graph_task(version_dir: Path, space: str, graph_config) -> dict:
    from pipeline.stages.graphs import build_and_write_space

    _, metadata = build_and_write_space(version_dir, space, graph_config)
    return metadata


@task(name="noise", retries=1)
def noise_task(version_dir: Path, variants: tuple[str, ...], num_classes: int) -> list[str]:
    from pipeline.contract.tables import LABELS_DIR, read_table
    from pipeline.stages.noise import write_variant_set

    samples = read_table(version_dir / SAMPLES, columns=["sample_id", "split", "label"])
    return sorted(write_variant_set(version_dir / LABELS_DIR, samples, list(variants), num_classes))


@task(name="report")
def report_task(version_dir: Path, summary: dict) -> str:
    from pipeline.report.build import build_report

    return str(build_report(version_dir, summary))


def _run_shards(stage: str, shard_task, shards: list, store_dir: Path, arguments) -> int:
    """One task per shard; a terminal bar and a Prefect progress artifact show progress.

    A shard whose part is missing from the store after its task (a stale Prefect cache entry, a part
    deleted by hand) is run once more with the cache refreshed, so the store is always complete.
    """
    if not shards:
        return 0
    total = sum(s.num_rows for s in shards)
    artifact = create_progress_artifact(progress=0.0, description=f"{stage}: {total} images in {len(shards)} shards")
    done = 0
    with tqdm(total=total, desc=stage, unit="img") as bar:
        for future in as_completed([shard_task.submit(*arguments(shard)) for shard in shards]):
            count = future.result()
            done += count
            bar.update(count)
            update_progress_artifact(artifact_id=artifact, progress=100.0 * done / total)
    stored = PartStore(store_dir).done_keys()
    missing = [s for s in shards if not set(s.column("key").to_pylist()) <= stored]
    if missing:
        log.warning("%s: %d shards had no stored part after their task; running them again", stage, len(missing))
        refreshed = shard_task.with_options(refresh_cache=True)
        for future in [refreshed.submit(*arguments(shard)) for shard in missing]:
            future.result()
    return done


def _per_image_stages(config, stages, plan, source, keys, out: Path, counts: dict) -> None:
    faces_dir, lm_dir, au_dir = (plan.store_dir(s) for s in ("faces", "landmarks", "action_units"))
    samples, size = source.samples, config.shard_size
    counts["faces"] = _run_shards(
        "faces", faces_shard_task, assemble.pending_shards(PartStore(faces_dir), samples, keys, size), faces_dir,
        lambda s: (s, source.image_root, stages.align, faces_dir, _shard_cache_key(faces_dir, s)))
    usable, quarantine = assemble.assemble_faces(PartStore(faces_dir), samples, keys, out, stages.align.crop_size)
    counts["landmarks"] = _run_shards(
        "landmarks", landmarks_shard_task,
        assemble.pending_shards(PartStore(lm_dir), samples, keys, size, only=usable), lm_dir,
        lambda s: (s, faces_dir, stages.landmarks, lm_dir, _shard_cache_key(lm_dir, s)))
    quarantine += assemble.assemble_table(PartStore(lm_dir), samples, keys, usable, out / LANDMARKS, "landmarks")
    counts["action_units"] = _run_shards(
        "action units", action_units_shard_task,
        assemble.pending_shards(PartStore(au_dir), samples, keys, size, only=usable), au_dir,
        lambda s: (s, faces_dir, lm_dir, stages.action_units, au_dir, _shard_cache_key(au_dir, s)))
    quarantine += assemble.assemble_table(PartStore(au_dir), samples, keys, usable, out / ACTION_UNITS,
                                          "action_units")
    append_quarantine(out / QUARANTINE, quarantine)


def _finish(config, stages, plan, source, counts: dict, timings: dict) -> dict:
    """Manifest and lock: written last, so their presence means the version is complete."""
    summary = {"dataset": plan.dataset, "version": plan.version, "path": str(plan.version_dir),
               "computed": counts, "seconds": timings, "source": source.summary()}
    manifest = {
        "dataset": plan.dataset, "version": plan.version, "stages": plan.stage_fingerprints,
        "stores": plan.store_fingerprints, "config": dataclasses.asdict(config),
        "stage_configs": {name: dataclasses.asdict(getattr(stages, name)) for name in
                          ("align", "landmarks", "action_units", "graphs")},
        "noise_variants": list(stages.noise),
        "spaces": list(stages.spaces), "crops": {"format": "memmap-u8-v1", "size": stages.align.crop_size},
        "image_root": str(source.image_root), "summary": summary,
    }
    outputs = {p.relative_to(plan.version_dir).as_posix(): p.stat().st_size
               for p in sorted(plan.version_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (plan.version_dir / MANIFEST).write_text(json.dumps({**manifest, "outputs": outputs}, indent=2, default=str))
    write_lock(plan.dataset, plan.version, {**manifest, "outputs": outputs})
    return summary


@flow(name="prepare", log_prints=False)
def prepare_flow(config: prepare.PrepareConfig) -> dict:
    """Prepare one dataset version; returns a summary with the version id and what was computed."""
    logger = get_run_logger()
    stages = prepare.resolve_stage_configs(config)       # a bad option fails here, before any work
    timings, counts = {}, {}
    start = time.perf_counter()
    source = sources_task(config, stages.spec)
    timings["sources"] = time.perf_counter() - start
    plan = prepare.plan_version(config, stages, source.fingerprint, prepare.stage_versions())
    if prepare.version_is_complete(plan):
        logger.info("version %s of %s is complete: nothing to do", plan.version, plan.dataset)
        return {"dataset": plan.dataset, "version": plan.version, "path": str(plan.version_dir),
                "computed": {}, "reused": True, "source": source.summary()}
    out = plan.version_dir
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / SAMPLES, source.samples, source.metadata)
    write_table(out / QUARANTINE, source.quarantine)
    keys = assemble.sample_keys(source.samples)
    start = time.perf_counter()
    _per_image_stages(config, stages, plan, source, keys, out, counts)
    timings["per_image"] = time.perf_counter() - start
    start = time.perf_counter()
    graphs = [graph_task.submit(out, space, stages.graphs) for space in prepare.spaces_present(out, stages.spaces)]
    noise = noise_task.submit(out, stages.noise, stages.spec.num_classes)
    counts["graphs"] = {g.result()["space"]: g.result().get("recall_at_k") for g in graphs}
    counts["noise"] = noise.result()
    timings["global"] = time.perf_counter() - start
    summary = {"computed": counts, "seconds": timings}
    if config.report:
        report_task(out, summary)
    summary = _finish(config, stages, plan, source, counts, timings)
    logger.info("prepared %s version %s at %s", plan.dataset, plan.version, out)
    return summary


def run_prepare(config: prepare.PrepareConfig, dask_address: str | None = None, dask_workers: int = 0) -> dict:
    """Run the prepare flow with the chosen task runner (threads, a LocalCluster or a Dask cluster)."""
    from flows.runtime import api_for_workers, configure_prefect, make_task_runner
    from pipeline.contract.lock import artifacts_root

    configure_prefect(results_dir=artifacts_root() / "_prefect-results")
    runner = make_task_runner(config.max_workers, dask_address, dask_workers)
    with api_for_workers(needed=bool(dask_workers)):
        return prepare_flow.with_options(task_runner=runner)(config)
