"""How a prepare's work runs: the shard mappers (serial, threads, worker processes), the one worker-pool
policy they and the Prefect flow's mapper share (`ProcessPolicy`), and the `WorkerPool` itself.

A mapper maps one stage's shard function over its shards. `ShardMapper` runs them one after another,
`ThreadMapper(n)` on n threads, `ProcessMapper(n)` in n worker processes; `make_mapper(config)` builds
the one `config.runner` names. `flows/prepare.py` adds a Prefect-task mapper on the same `ProcessPolicy`.

Threads are bound by the GIL on the per-image stages (dlib's shape predictor and most of the glue hold
it: bench/results/bench_face_stages.json, "gil"), so `runner: processes` (the default) runs each shard in
one of `max_workers` worker processes. How:

- Workers are started with `spawn` (or `forkserver`), never `fork`: the parent has threads (tqdm, a
  Prefect runner), and a fork taken while one of them holds a lock would inherit it held.
- Each worker's initializer limits OpenCV, BLAS/OpenMP (threadpoolctl) and torch to one thread (the
  workers are the parallelism), ignores Ctrl-C (the parent stops the pool), asks the kernel to kill it
  when the parent dies (a `kill -9` of the run leaves no worker writing parts behind it), forwards its
  log records to the parent's logging, and loads the stages' models once (`warm_stages`).
- A worker runs a whole shard and writes its part through the part store itself (atomic rename, named by
  the shard's keys), so what the parent receives is an image count; a killed run resumes shard by shard
  exactly as a serial one. The parts hold the same bytes as a serial run's: the backends are deterministic
  and one thread per worker changes no arithmetic (tests/flows/test_determinism.py).
- A failure inside a worker comes back as data (class, message, remote traceback), never as a pickled
  exception: the parent raises the same class with the same one-line message (a FerError stays a
  FerError, so the command line prints its one `error:` line) and writes the worker's traceback to the
  log at INFO (the log file, not the terminal). A worker that dies (out of memory, a crash in C code)
  fails the stage with an ArtifactError saying that finished shards are kept.

The policy (`ProcessPolicy`): workers are started once a run's options passed their checks, each loading
the per-image stages' models (every registered per-image stage's backend check, `warm_stages`); a stage
with fewer than two pending shards, or a pool of one worker, runs in this process (a process pool gives
it nothing but start-up time); a stage with fewer than `process_min_images` pending images runs on
threads while the workers are not running yet (starting them costs 1.3-2.5 s here, and they gain ~2 ms
per image over threads on the given-box path: bench/results/bench_face_stages.md); the pool is closed
when the run ends, however it ends.
"""
from __future__ import annotations

import importlib
import logging
import logging.handlers
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa

from pipeline.contract.errors import ArtifactError, ConfigError, choices_message

log = logging.getLogger(__name__)
START_METHODS = ("spawn", "forkserver")
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerFailure:
    """An exception raised in a worker, as plain data (always picklable)."""

    module: str
    name: str
    message: str
    traceback: str
    pid: int


# --- inside a worker ----------------------------------------------------------------------------------

_startup_failure: WorkerFailure | None = None


def _failure(exc: BaseException) -> WorkerFailure:
    return WorkerFailure(type(exc).__module__, type(exc).__qualname__, str(exc),
                         "".join(traceback.format_exception(exc)), os.getpid())


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the thread that started it (the run's main thread) goes away."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError) as exc:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)


def limit_threads() -> None:
    """One thread for OpenCV, BLAS/OpenMP and torch in this process (where they are loaded)."""
    for key in THREAD_ENV:
        os.environ[key] = "1"
    import cv2
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)

    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _initialize(log_queue, level: int, warm: Callable[[], None] | None) -> None:
    global _startup_failure
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if log_queue is not None:
        root = logging.getLogger()
        root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
        root.setLevel(level)
    try:
        limit_threads()
        if warm is not None:
            warm()
        limit_threads()                  # again: warming may have imported torch
    except BaseException as exc:         # noqa: BLE001 - reported with the first shard, as any failure
        _startup_failure = _failure(exc)


def _run_in_worker(work: Callable[[pa.Table], int], shard: pa.Table) -> tuple[int | None, WorkerFailure | None]:
    if _startup_failure is not None:
        return None, _startup_failure
    try:
        return work(shard), None
    except BaseException as exc:         # noqa: BLE001 - returned as data, raised again in the parent
        return None, _failure(exc)


def _started() -> int:
    return os.getpid()


def warm_stages(checks: tuple[tuple[Callable[[object], None], object], ...]) -> None:
    """Load the per-image stages' models in this process: each stage's own up-front check on its config."""
    for check, config in checks:
        check(config)


# --- in the parent -------------------------------------------------------------------------------------

def _exception_class(failure: WorkerFailure) -> type[BaseException]:
    try:
        found = importlib.import_module(failure.module)
        for part in failure.name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return RuntimeError
    return found if isinstance(found, type) and issubclass(found, Exception) else RuntimeError


def as_exception(failure: WorkerFailure) -> BaseException:
    """The worker's exception rebuilt in this process: its class (or the nearest base taking one message)."""
    for cls in _exception_class(failure).__mro__:
        if not issubclass(cls, Exception):
            continue
        try:
            return cls(failure.message)
        except Exception as exc:    # noqa: BLE001 - a class with its own signature: try its base
            log.debug("%s(message) cannot be built (%s); trying its base class", cls.__name__, exc)
    return RuntimeError(failure.message)


def _shard_label(shard: pa.Table) -> str:
    first = shard.column("relpath")[0].as_py() if "relpath" in shard.column_names and shard.num_rows else "?"
    return f"a shard of {shard.num_rows} images (first {first})"


class WorkerPool:
    """`workers` spawned processes running shard work (see the module docstring). Start it from the
    thread that lives as long as the run (the main thread): the workers die with that thread."""

    def __init__(self, workers: int = 2, start_method: str = "spawn",
                 warm: Callable[[], None] | None = None) -> None:
        if start_method not in START_METHODS:
            raise ConfigError(choices_message("process start method", start_method, START_METHODS))
        self.workers, self.start_method, self.warm = max(1, int(workers)), start_method, warm
        self._executor: ProcessPoolExecutor | None = None
        self._listener: logging.handlers.QueueListener | None = None
        self._broken = False
        self.pids: list[int] = []

    @property
    def running(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        """Start every worker now (from this thread), each loading its models once."""
        if self._executor is not None:
            return
        if self._broken:
            raise ArtifactError("the worker pool stopped after a failure; run the prepare again to resume")
        context = multiprocessing.get_context(self.start_method)
        queue = context.Queue()
        self._listener = logging.handlers.QueueListener(queue, _Forward(), respect_handler_level=False)
        self._listener.start()
        self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_initialize,
                                             initargs=(queue, logging.getLogger().getEffectiveLevel(), self.warm))
        try:            # one call per worker, submitted before any is idle: every worker starts here
            for future in [self._executor.submit(_started) for _ in range(self.workers)]:
                future.result()
            self.pids = sorted(getattr(self._executor, "_processes", None) or {})
        except BrokenProcessPool as exc:
            self.close()
            raise ArtifactError(f"the {self.workers} worker processes could not start ({exc}); "
                                "run with --set runner=serial to see the error in this process") from None
        log.info("%d worker processes started (%s): pids %s", self.workers, self.start_method, self.pids)

    def submit(self, work: Callable[[pa.Table], int], shard: pa.Table) -> Future:
        self.start()
        return self._executor.submit(_run_in_worker, work, shard)

    def outcome(self, future: Future, stage: str, shard: pa.Table) -> int:
        """A finished future's image count; a worker's failure raised here as its own class, one line."""
        try:
            count, failure = future.result()
        except BrokenProcessPool:
            self._broken = True
            self.close()
            raise ArtifactError(f"{stage}: a worker process died (out of memory, or a crash in native code?); "
                                "finished shards are kept: run again to resume, or with --set runner=serial to "
                                "find the image") from None
        if failure is None:
            return count
        log.info("%s: %s failed in worker pid %d:\n%s", stage, _shard_label(shard), failure.pid, failure.traceback)
        raise as_exception(failure) from None

    def run(self, work: Callable[[pa.Table], int], shard: pa.Table, stage: str = "shard") -> int:
        """Run one shard in a worker and wait (for callers that bring their own threads, e.g. Prefect's)."""
        return self.outcome(self.submit(work, shard), stage, shard)

    def close(self, cancel: bool = False) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=not cancel, cancel_futures=True)
            if cancel:
                for process in list((getattr(executor, "_processes", None) or {}).values()):
                    process.kill()
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


class _Forward(logging.Handler):
    """Hands a worker's log record to this process's logger of the same name."""

    def handle(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            record.processName = f"worker-{record.process}"
            logger.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:      # pragma: no cover - handle() does the work
        pass


def map_on_pool(pool: WorkerPool, stage: str, work, shards: list[pa.Table]):
    """Yield each shard's image count as its worker finishes it; on any failure the pool stops at once."""
    futures = {pool.submit(work, shard): shard for shard in shards}
    try:
        for future in as_completed(futures):
            yield pool.outcome(future, stage, futures[future])
    except BaseException:
        for future in futures:
            future.cancel()
        pool.close(cancel=True)
        raise



# --- the one pool policy and the mappers on it ----------------------------------------------------------

ShardWork = Callable[[pa.Table], int]


class ProcessPolicy:
    """When shards go to worker processes (see the module docstring): start, use, close."""

    def __init__(self, workers: int = 2, min_images: int = 0, start_method: str = "spawn") -> None:
        self.workers, self.min_images, self.start_method = max(1, int(workers)), min_images, start_method
        self.pool: WorkerPool | None = None

    def start(self, stages) -> None:
        """Make the pool (not its processes yet) once options and backends passed their checks."""
        if self.pool is None and self.workers > 1:
            self.pool = WorkerPool(self.workers, self.start_method, partial(warm_stages, stages.warm_checks()))

    def wants_pool(self, shards: list[pa.Table]) -> bool:
        """Whether this stage's shards go to the workers."""
        if self.pool is None or len(shards) < 2:
            return False
        return self.pool.running or sum(s.num_rows for s in shards) >= self.min_images

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


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

    def start(self, stages) -> None:
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
    """Shards in `max_workers` spawned worker processes as `ProcessPolicy` says (else threads, or serial
    for a single shard); independent calls (graphs, noise) on threads of this process, as ThreadMapper."""

    name = "processes"

    def __init__(self, max_workers: int = 2, start_method: str = "spawn", min_images: int = 0):
        super().__init__(max_workers)
        self.policy = ProcessPolicy(max_workers, min_images, start_method)

    @property
    def min_images(self) -> int:
        return self.policy.min_images

    def start(self, stages):
        self.policy.start(stages)

    def map_shards(self, stage, work, shards, store_dir, refresh=False):
        if self.policy.wants_pool(shards):
            yield from map_on_pool(self.policy.pool, stage, work, shards)
        elif len(shards) < 2 or self.policy.pool is None:
            yield from ShardMapper.map_shards(self, stage, work, shards, store_dir, refresh)
        else:
            yield from ThreadMapper.map_shards(self, stage, work, shards, store_dir, refresh)

    def close(self):
        self.policy.close()


def make_mapper(config) -> ShardMapper:
    """The mapper `config.runner` names (serial | threads | processes), with `config.max_workers` workers."""
    if config.runner == "processes":
        return ProcessMapper(config.max_workers, min_images=config.process_min_images)
    return ThreadMapper(config.max_workers) if config.runner == "threads" else ShardMapper()
