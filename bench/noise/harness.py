"""Running a noise benchmark: one trainer run per unfinished cell, branch choice, the run lock, outputs."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path

from bench.noise.plan import (
    HARNESS_VERSION,
    BenchmarkPlan,
    Cell,
    cell_config,
    config_fingerprint,
    images_seen,
)
from bench.noise.diagnostics import cell_diagnostics
from bench.noise.report import aggregate, format_markdown, write_csv, write_plot
from pipeline.contract.atomic import write_text
from pipeline.contract.errors import ConfigError, FerError
from training.report import jsonable

log = logging.getLogger(__name__)

CELL_METRICS = ("test_accuracy", "test_mean_class_accuracy", "recovered", "memorised", "n_flipped",
                "target_recovered", "votes_js_bits")


def _write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2, default=jsonable) + "\n")


def read_cell(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _split_metrics(run, loader) -> dict:
    from training.evaluate import classification_metrics, predict

    out = predict(run.method, loader, run.device, channels_last=run.channels_last, autocast=run.autocast)
    return classification_metrics(out["label"], out["logits"].argmax(1), run.version.num_classes)


def _selection_loader(run):
    """(loader, split name) to choose an evaluation branch on: the validation loader the engine built for a
    method with branches (training.engine.setup), or None without a val split.

    The test split never chooses anything: without a validation split the method's configured branch is kept.
    """
    loader = run.eval_loaders.get("val")
    return (loader, "val") if loader is not None else (None, None)


def select_branch(config, run_dir: Path) -> dict | None:
    """For a method with evaluation branches: pick the better one on validation, save it, re-evaluate.

    Without a validation split the configured branch (e.g. SOFT's `eval_branch`, default student) is kept
    and recorded as fixed; the test split is only evaluated, never used to choose.
    """
    from training.engine import config_replace, save, setup
    from training.evaluate import branch_accuracies, flip_recovery, predict
    from training.methods import method_class

    cls = method_class(config.method)
    branches = getattr(cls, "eval_branches", None)
    if not branches or not hasattr(cls, "set_eval_branch"):
        return None
    run = setup(config_replace(config, runtime={"resume": str(run_dir)}))
    try:
        loader, selected_on = _selection_loader(run)
        scores = {}
        if loader is None:
            best, selected_on = run.method.eval_branch, "fixed: configured branch (no validation split)"
        else:
            scores = branch_accuracies(run.method, loader, run.device, run.version.num_classes,
                                       channels_last=run.channels_last, autocast=run.autocast)
            best = max(branches, key=lambda b: scores[b])  # ties keep the first listed branch
        run.method.set_eval_branch(best)
        save(run)
        test = _split_metrics(run, run.eval_loaders["test"])
        record = {"branch": best, "selected_on": selected_on, "selection_accuracy": scores,
                  "test_accuracy": test["accuracy"], "test_mean_class_accuracy": test["mean_class_accuracy"]}
        if "flipped" in run.eval_loaders:
            flipped = predict(run.method, run.eval_loaders["flipped"], run.device, channels_last=run.channels_last,
                              autocast=run.autocast)
            recovery = flip_recovery(flipped["logits"].argmax(1), flipped["label"], flipped["clean_label"])
            record.update({k: recovery[k] for k in ("n_flipped", "recovered", "memorised")})
        return record
    finally:
        run.logger.close()


def run_cell(plan: BenchmarkPlan, cell: Cell, dataset_version: str, fingerprint: str, num_train: int = 0) -> dict:
    """Train one cell (resuming its run when a checkpoint exists) and return its record."""
    from training.checkpoint import LAST
    from training.engine import fit

    run_id = f"{plan.name}-{cell.key}-{fingerprint}"
    if plan.force:  # a fresh run directory: never resume what --force retrains
        base, attempt = run_id, 2
        while (plan.runs_root / run_id).exists():
            run_id, attempt = f"{base}-r{attempt}", attempt + 1
    run_dir = plan.runs_root / run_id
    resume = str(run_dir) if (run_dir / "checkpoints" / LAST).is_file() else None
    config = cell_config(plan, cell, run_id=run_id, resume=resume)
    tic = time.perf_counter()
    final = fit(config)
    record = {"cell": dataclasses.asdict(cell), "status": "done", "fingerprint": fingerprint,
              "dataset": plan.dataset, "dataset_version": dataset_version, "run_dir": str(run_dir),
              "resumed": resume is not None, "train_seconds": round(time.perf_counter() - tic, 2),
              "epochs": config.epochs, "images_seen": images_seen(config, num_train),
              "metrics": {k: final[k] for k in CELL_METRICS if k in final},
              "per_class_accuracy": final.get("per_class_accuracy"), "confusion": final.get("confusion")}
    branch = select_branch(config, run_dir)
    if branch is not None:
        record["branch"] = branch
        record["metrics"].update({k: branch[k] for k in CELL_METRICS if k in branch})
    record["diagnostics"] = cell_diagnostics(run_dir, cell.method, record)
    record["seconds"] = round(time.perf_counter() - tic, 2)
    return record


@contextlib.contextmanager
def exclusive_run(plan: BenchmarkPlan):
    """One process at a time per benchmark name: a second one fails at once instead of mixing results."""
    import fcntl

    plan.runs_root.mkdir(parents=True, exist_ok=True)
    path = plan.runs_root / f"{plan.name}.lock"
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ConfigError(f"another benchmark run is writing {plan.name!r} (lock {path}); wait for it to "
                              f"finish or give a different --name") from exc
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_benchmark(plan: BenchmarkPlan) -> dict:
    """Run every unfinished cell, then aggregate and write the table; returns the summary."""
    with exclusive_run(plan):
        return _run_cells(plan)


def _dataset_info(plan: BenchmarkPlan) -> dict:
    """The version every cell trains on (fails at once on a variant that is not prepared)."""
    from training.data import PreparedVersion

    first = cell_config(plan, plan.cells()[0])
    version = PreparedVersion.open(plan.dataset, first.version, first.artifacts_root, first.manifests_root)
    for variant in plan.variants:
        version.labels(variant)
    return {"version": version.version, "prepare_config": version.lock.get("config"),
            "num_train": len(version.split_data("train", plan.variants[0])),
            "num_test": len(version.eval_split(plan.variants[0])), "graphs": version.graph_spaces()}


def _attempt_cell(plan: BenchmarkPlan, cell: Cell, dataset: dict, fingerprint: str) -> tuple[dict, str]:
    """(record, action) of one cell's training; a failure becomes a 'failed' record, not an exception."""
    try:
        return run_cell(plan, cell, dataset["version"], fingerprint, dataset["num_train"]), "trained"
    except (FerError, RuntimeError, ValueError) as exc:
        log.error("cell %s failed: %s", cell.key, exc)
        return _failed(cell, fingerprint, exc), "failed"


def _failed(cell: Cell, fingerprint: str, exc: BaseException) -> dict:
    return {"cell": dataclasses.asdict(cell), "status": "failed", "fingerprint": fingerprint,
            "error": f"{type(exc).__name__}: {exc}"}


def _worker_init() -> None:
    """A --jobs worker process: one torch thread (and one BLAS/OpenMP thread), the harness's logging."""
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")


def _pending(plan: BenchmarkPlan, dataset: dict) -> tuple[dict, dict, list]:
    """(records by key of finished cells, actions, [(cell, fingerprint)] still to train)."""
    records, actions, todo = {}, {}, []
    for cell in plan.cells():
        fingerprint = config_fingerprint(cell_config(plan, cell), dataset["version"])
        previous = read_cell(plan.cells_dir / f"{cell.key}.json")
        if (not plan.force and previous and previous.get("status") == "done"
                and previous.get("fingerprint") == fingerprint):
            log.info("cell %s: finished earlier, not retrained", cell.key)
            records[cell.key], actions[cell.key] = previous, "skipped"
        else:
            todo.append((cell, fingerprint))
    return records, actions, todo


def _run_cells(plan: BenchmarkPlan) -> dict:
    dataset = _dataset_info(plan)
    records, actions, todo = _pending(plan, dataset)
    if plan.aggregate_only:
        log.info("aggregate only: %d cells finished, %d not trained", len(records), len(todo))
        actions.update({cell.key: "not trained" for cell, _ in todo})
        todo = []
    order = [c.key for c in plan.cells()]

    def finished(cell: Cell, record: dict, action: str) -> None:
        _write_json(plan.cells_dir / f"{cell.key}.json", record)
        records[cell.key], actions[cell.key] = record, action
        done = [records[k] for k in order if k in records]
        write_outputs(plan, dataset, done, actions)  # the table so far, after every trained cell

    if plan.jobs <= 1 or len(todo) <= 1:
        for cell, fingerprint in todo:
            log.info("cell %s: training (fingerprint %s)", cell.key, fingerprint)
            finished(cell, *_attempt_cell(plan, cell, dataset, fingerprint))
    else:
        _run_parallel(plan, dataset, todo, finished)
    return write_outputs(plan, dataset, [records[k] for k in order if k in records], actions)


def _run_parallel(plan: BenchmarkPlan, dataset: dict, todo: list, finished) -> None:
    """Cells in plan.jobs spawned worker processes, one torch thread each; results as they finish.

    Every cell is seeded and trains alone in its process, so its numbers are those of a serial run with
    runtime.threads=1 (a volatile key: the fingerprints, hence the per-cell resume, do not change).
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # --set values are typed str subclasses that do not pickle: plain text, which the config reads the same way
    plain = tuple((key, str(value) if isinstance(value, str) else value) for key, value in plan.overrides)
    worker_plan = dataclasses.replace(plan, overrides=plain + (("runtime.threads", 1),))
    log.info("%d cells in %d worker processes", len(todo), plan.jobs)
    with ProcessPoolExecutor(max_workers=min(plan.jobs, len(todo)), initializer=_worker_init,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_attempt_cell, worker_plan, cell, dataset, fp): (cell, fp) for cell, fp in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                cell, fingerprint = futures[future]
                try:
                    record, action = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that died (e.g. killed): the cell failed
                    log.error("cell %s: worker failed: %s", cell.key, exc)
                    record, action = _failed(cell, fingerprint, exc), "failed"
                finished(cell, record, action)


def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    info["description"] = (f"{os.cpu_count()}-core CPU" if not torch.cuda.is_available()
                           else f"{torch.cuda.get_device_name(0)} GPU, {os.cpu_count()} CPU cores")
    return info


def write_outputs(plan: BenchmarkPlan, dataset: dict, records: list[dict], actions: dict) -> dict:
    rows = aggregate(records, plan.methods, plan.variants)
    summary = {"name": plan.name, "dataset": plan.dataset, "dataset_version": dataset["version"],
               "dataset_info": dataset,
               "methods": list(plan.methods), "variants": list(plan.variants), "seeds": list(plan.seeds),
               "config_file": plan.config_file, "overrides": [list(o) for o in plan.overrides],
               "command": plan.command, "jobs": plan.jobs, "notes_file": plan.notes,
               "controls": {method: list(rows) for method, rows in plan.controls},
               "machine": machine_info(), "harness_version": HARNESS_VERSION,
               "written": time.strftime("%Y-%m-%d %H:%M:%S"), "actions": actions, "table": rows,
               "cells": records}
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(plan.out_dir / f"{plan.name}.json", summary)
    (plan.out_dir / f"{plan.name}.md").write_text(format_markdown(summary))
    write_csv(rows, plan.out_dir / f"{plan.name}.csv")
    write_plot(rows, plan.methods, plan.variants, plan.out_dir / f"{plan.name}.png",
               f"{plan.dataset} ({dataset['version']}), seeds {','.join(map(str, plan.seeds))}")
    return summary
