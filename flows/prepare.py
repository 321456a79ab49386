"""The prepare flow: pipeline.prepare.run_prepare with its work run as Prefect tasks.

Thin by design: the stage order, pending shards, assembly and lock all live in `pipeline.prepare`; this
module only gives it a `PrefectMapper`. Per-image stages run as one task per shard (`shard_size` images)
with retries on I/O errors (never on a configuration or data error: a retry would give the same answer),
Prefect caching keyed on the store fingerprint and the shard's keys, and a progress artefact per stage.
Global stages that read nothing of each other run as concurrent tasks, one per call (pipeline.stages.base:
`steps`); the task runner (threads, a Dask LocalCluster, a Dask cluster) decides where. With `runner:
processes` (the default) and the thread task runner, each shard task of a stage with at least
`process_min_images` pending images hands its shard to one of `max_workers` worker processes
(pipeline.mappers.ProcessPolicy, the plain runner's policy too) and waits: Prefect keeps the caching,
retries and progress, the processes get past the GIL. Dask workers are processes already.

No `from __future__ import annotations` here: a served deployment's runner cloudpickles the flow into a
freshly spawned process, where the flow function keeps only the globals its body names, so a string
annotation (`"PrepareConfig"`) cannot be resolved there and parameter validation fails.
"""
import hashlib
import logging
from functools import partial
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from pipeline import prepare
from pipeline.config import PrepareConfig
from pipeline.contract.errors import FerError
from pipeline.mappers import ProcessPolicy, ShardMapper

log = logging.getLogger(__name__)


def _cache_key(context, parameters) -> str:
    return parameters["cache_key"]


def shard_cache_key(store_dir: Path, shard) -> str:
    """Prefect cache key of one shard task: its output store (named by the stage fingerprint) and its keys.

    The store's path is part of the key, so a cache hit always means the part exists in that store.
    """
    text = "\n".join([str(store_dir), *shard.column("key").to_pylist()])
    return f"{Path(store_dir).name}-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


def retry_unless_fer_error(task, task_run, state) -> bool:
    """Retry I/O trouble; a FerError (configuration, data) is deliberate and would fail the same way again."""
    try:
        state.result()
    except FerError:
        return False
    except BaseException:       # noqa: BLE001 - anything else may be transient
        return True
    return True


@task(name="shard", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_unless_fer_error,
      cache_key_fn=_cache_key, persist_result=True, result_serializer="json")
def shard_task(work, shard, cache_key: str) -> int:
    return work(shard)


@task(name="step", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_unless_fer_error,
      cache_policy=NO_CACHE)          # steps re-run unless the version is complete (pipeline.prepare decides)
def step_task(function):
    return function()


def _task_name(stage: str) -> str:
    """A Prefect task name: spaces and underscores become hyphens."""
    return stage.replace(" ", "-").replace("_", "-")


class PrefectMapper(ShardMapper):
    """One Prefect task per shard (cached, retried, counted in a progress artefact) on the flow's task runner;
    worker processes as pipeline.mappers.ProcessPolicy says, the same policy as the plain runner's."""

    name = "prefect"

    def __init__(self, processes: int = 0, min_images: int = 0):
        self.policy = ProcessPolicy(processes, min_images)

    def start(self, stages):
        self.policy.start(stages)

    def close(self):
        self.policy.close()

    def map_shards(self, stage, work, shards, store_dir, refresh=False):
        if not shards:
            return
        if self.policy.wants_pool(shards):
            self.policy.pool.start()           # from the flow's thread: workers live as long as it does
            work = partial(self.policy.pool.run, work, stage=stage)
        runner = shard_task.with_options(name=f"{_task_name(stage)}-shard", refresh_cache=refresh or None)
        total = sum(s.num_rows for s in shards)
        artifact = create_progress_artifact(progress=0.0,
                                            description=f"{stage}: {total} images in {len(shards)} shards")
        futures = [runner.submit(work, shard, shard_cache_key(store_dir, shard)) for shard in shards]
        done = 0
        for future in as_completed(futures):
            count = future.result()
            done += count
            update_progress_artifact(artifact_id=artifact, progress=100.0 * done / total)
            yield count

    def run_calls(self, stage, calls):
        """One task per call: task name the call's kind (`graph` of `graph-au`), run name the call's name."""
        futures = {name: step_task.with_options(name=name.partition("-")[0], task_run_name=name).submit(call)
                   for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}

    def call(self, stage, function):
        return step_task.with_options(name=_task_name(stage))(function)


@flow(name="prepare", log_prints=False)
def prepare_flow(config: PrepareConfig, processes: bool = True) -> dict:
    """Prepare one dataset version; returns a summary with the version id and what was computed.

    `processes`: shards in worker processes when `config.runner` is processes (False under Dask).
    """
    workers = config.max_workers if processes and config.runner == "processes" else 0
    mapper = PrefectMapper(workers, config.process_min_images)
    return prepare.run_prepare(config, mapper, progress=True)


def run_prepare(config: PrepareConfig, dask_address: str | None = None, dask_workers: int = 0) -> dict:
    """Run the prepare flow with the chosen task runner (threads, a LocalCluster or a Dask cluster).

    Without PREFECT_API_URL a temporary Prefect server is started for the run; Dask workers report to it.
    The run is recorded under `<artifacts>/_prefect/runs/`, so after a SIGKILL the next run stops the
    server and workers it left behind.
    """
    from flows.runtime import configure_prefect, make_task_runner, run_record, temporary_api
    from pipeline.config import check_backends, check_dataset_root, resolve_stage_configs
    from pipeline.contract.lock import artifacts_root
    from pipeline.store.prepare_lock import PrepareLock

    stages = resolve_stage_configs(config)                # a bad option fails here, before Prefect starts
    check_dataset_root(config, stages)
    check_backends(stages)
    if not config.lock_wait_s:                            # another prepare running: refuse before Prefect starts
        with PrepareLock(artifacts_root(), stages.spec.name):
            pass
    configure_prefect(results_dir=artifacts_root() / "_prefect-results")
    runner = make_task_runner(config.max_workers, dask_address, dask_workers)
    with run_record(artifacts_root()), temporary_api():
        return prepare_flow.with_options(task_runner=runner)(config, processes=not (dask_address or dask_workers))
