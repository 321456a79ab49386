"""Noise-robustness benchmark: every method x noise variant x seed, reported like the papers' Table 1.

    python -m training.benchmark --dataset synthetic --methods baseline,ldl_alsg,lanet,soft,ldlva \\
        --noise sym-0.30 --seeds 0,1 --config training/configs/benchmark_tiny.yaml

A *cell* is one (method, variant, seed) training run. Each finished cell is stored as JSON under
`<out>/<name>_cells/`, keyed by a fingerprint of its resolved training config and the dataset version id,
so a second invocation retrains nothing that already finished (a cell whose config or data changed is
trained again; a failed cell is retried; a cell killed mid-run resumes from its run's last checkpoint).
Then the table is written: `<out>/<name>.md` (mean +- std over seeds of test accuracy, mean class accuracy
and flip recovery, one row per method, one column per variant), `<name>.csv` (long format), `<name>.png`
(bars with std error bars) and `<name>.json` (every cell, the aggregates and the machine).

Flip recovery: the share of flipped training samples (noisy label != clean label) whose clean class the
trained model predicts (training.evaluate.noise_memorisation; evaluated without augmentation).

Methods with several evaluation branches (`eval_branches` and `set_eval_branch`, e.g. SOFT's student and
teacher) are evaluated with each branch on the validation split, the better one is kept (and saved in the
run's checkpoint) and the cell records which. Without a validation split the test split is used for the
choice, and the table says so.

The `--config` file is either a plain training-config layer (applied over every method's
configs/<method>.yaml, like `python -m training.train --config`) or has the sections
`benchmark:` (name), `train:` (that common layer) and `methods: {<method>: layer}` (per-method layers).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.contract.errors import ConfigError, FerError
from training.benchmark_report import aggregate, format_markdown, write_csv, write_plot
from training.report import jsonable

log = logging.getLogger(__name__)

STAGE_VERSION = "1.0.0"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = PROJECT_ROOT / "bench" / "results"
# Keys that do not change what a cell trains (display, logging, I/O placement); left out of its fingerprint.
VOLATILE_KEYS = ("runtime.progress", "runtime.tensorboard", "runtime.log_every", "runtime.report",
                 "runtime.threads", "runtime.run_id", "runtime.runs_root", "runtime.resume", "data.num_workers",
                 "data.persistent_workers", "data.prefetch_factor", "data.pin_memory", "data.eval_batch_size",
                 "artifacts_root", "manifests_root", "version")


@dataclass(frozen=True)
class Cell:
    method: str
    variant: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}__{self.variant}__s{self.seed}"


@dataclass(frozen=True)
class BenchmarkPlan:
    """What to run and where the results go."""

    dataset: str
    methods: tuple[str, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    name: str
    out_dir: Path
    runs_root: Path
    common: dict                     # training-config layer for every cell
    per_method: dict                 # method -> extra layer
    overrides: tuple = ()            # (key, value) CLI overrides, applied last
    config_file: str | None = None
    force: bool = False

    @property
    def cells_dir(self) -> Path:
        return self.out_dir / f"{self.name}_cells"

    def cells(self) -> list[Cell]:
        return [Cell(m, v, s) for v in self.variants for m in self.methods for s in self.seeds]


# ------------------------------------------------------------------------------------------- config
def load_benchmark_file(path: str | Path | None) -> tuple[dict, dict, dict]:
    """(benchmark options, common layer, per-method layers) from a benchmark or plain config file."""
    if path is None:
        return {}, {}, {}
    from training.config import load_yaml

    data = load_yaml(path)
    if not {"benchmark", "train", "methods"} & set(data):
        return {}, data, {}
    unknown = set(data) - {"benchmark", "train", "methods"}
    if unknown:
        raise ConfigError(f"benchmark config {path}: unknown sections {sorted(unknown)}; "
                          f"valid: benchmark, train, methods")
    return data.get("benchmark") or {}, data.get("train") or {}, data.get("methods") or {}


def flatten(layer: dict, prefix: str = "") -> list[tuple[str, object]]:
    """{'optim': {'lr': 1e-3}, 'epochs': 3} -> [('optim.lr', 0.001), ('epochs', 3)] (config overrides)."""
    out = []
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten(value, path + "."))
        else:
            out.append((path, value))
    return out


def cell_config(plan: BenchmarkPlan, cell: Cell, run_id: str | None = None, resume: str | None = None):
    """The resolved TrainConfig of a cell: method yaml <- common <- per-method <- CLI <- cell keys."""
    from training.config import resolve_config

    overrides = flatten(plan.common) + flatten(plan.per_method.get(cell.method) or {}) + list(plan.overrides)
    overrides += [("runtime.seed", cell.seed), ("runtime.runs_root", str(plan.runs_root))]
    if run_id:
        overrides.append(("runtime.run_id", run_id))
    if resume:
        overrides.append(("runtime.resume", resume))
    return resolve_config(cell.method, plan.dataset, cell.variant, None, overrides)


def config_fingerprint(config, dataset_version: str) -> str:
    """Hash of what a cell trains: the resolved config without VOLATILE_KEYS, plus the data version id."""
    values = config.to_dict()
    for dotted in VOLATILE_KEYS:
        node, *rest = dotted.split(".")
        if rest:
            values.get(node, {}).pop(rest[0], None)
        else:
            values.pop(node, None)
    text = json.dumps({"config": values, "dataset_version": dataset_version, "harness": STAGE_VERSION},
                      sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# -------------------------------------------------------------------------------------------- cells
def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=jsonable) + "\n")
    os.replace(tmp, path)


def read_cell(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _eval_split_metrics(run, loader) -> dict:
    from training.evaluate import classification_metrics, predict

    kw = {"channels_last": run.channels_last, "autocast": run.autocast}
    out = predict(run.method, loader, run.device, **kw)
    return classification_metrics(out["label"], out["logits"].argmax(1), run.version.num_classes)


def _selection_loader(run):
    """(loader, split name) used to choose an evaluation branch: 'val' when the version has one."""
    from training.augment import AugmentConfig
    from training.loader import SplitDataset, make_loader
    from training.samplers import ShuffleSampler

    if "val" in run.version.splits() and run.test.name != "val":
        split = run.version.split_data("val", run.config.noise)
        d = run.config.data
        augment = AugmentConfig(d.image_size, False, d.random_crop, d.flip, d.color_jitter, d.erasing_p,
                                tuple(d.erasing_scale), tuple(d.erasing_ratio))
        dataset = SplitDataset(run.version, split, augment, (), run.config.runtime.seed, d.resize)
        sampler = ShuffleSampler(len(split), d.eval_batch_size, shuffle=False, drop_last=False)
        return make_loader(dataset, sampler, 0, False, False, 2, run.config.runtime.seed), "val"
    return run.eval_loaders["test"], f"{run.test.name} (no validation split)"


def select_branch(config, run_dir: Path) -> dict | None:
    """For a method with evaluation branches: pick the better one on validation, save it, re-evaluate."""
    from training.engine import config_replace, save, setup
    from training.evaluate import noise_memorisation, predict
    from training.methods import method_class

    cls = method_class(config.method)
    branches = getattr(cls, "eval_branches", None)
    if not branches or not hasattr(cls, "set_eval_branch"):
        return None
    run = setup(config_replace(config, runtime={"resume": str(run_dir)}))
    try:
        loader, selected_on = _selection_loader(run)
        scores = {}
        for branch in branches:
            run.method.set_eval_branch(branch)
            scores[branch] = _eval_split_metrics(run, loader)["accuracy"]
        best = max(branches, key=lambda b: scores[b])  # ties keep the first listed branch
        run.method.set_eval_branch(best)
        save(run)
        test = _eval_split_metrics(run, run.eval_loaders["test"])
        record = {"branch": best, "selected_on": selected_on, "selection_accuracy": scores,
                  "test_accuracy": test["accuracy"], "test_mean_class_accuracy": test["mean_class_accuracy"]}
        if "flipped" in run.eval_loaders:
            flipped = predict(run.method, run.eval_loaders["flipped"], run.device, channels_last=run.channels_last,
                              autocast=run.autocast)
            record.update(noise_memorisation(flipped["logits"].argmax(1), flipped["label"], flipped["clean_label"]))
        return record
    finally:
        run.logger.close()


CELL_METRICS = ("test_accuracy", "test_mean_class_accuracy", "recovered", "memorised", "n_flipped",
                "target_recovered", "votes_js")


def run_cell(plan: BenchmarkPlan, cell: Cell, dataset_version: str, fingerprint: str, config) -> dict:
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
              "metrics": {k: final[k] for k in CELL_METRICS if k in final},
              "per_class_accuracy": final.get("per_class_accuracy"), "confusion": final.get("confusion")}
    branch = select_branch(config, run_dir)
    if branch is not None:
        record["branch"] = branch
        record["metrics"].update({k: branch[k] for k in CELL_METRICS if k in branch})
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


def _run_cells(plan: BenchmarkPlan) -> dict:
    from training.data import PreparedVersion

    first = cell_config(plan, plan.cells()[0])
    version = PreparedVersion.open(plan.dataset, first.version, first.artifacts_root, first.manifests_root)
    for variant in plan.variants:
        version.labels(variant)  # fail at once on a variant that is not prepared
    dataset = {"version": version.version, "prepare_config": version.lock.get("config"),
               "num_train": len(version.split_data("train", plan.variants[0])),
               "num_test": len(version.eval_split(plan.variants[0])), "graphs": version.graph_spaces()}
    records, actions = [], {}
    for cell in plan.cells():
        config = cell_config(plan, cell)
        fingerprint = config_fingerprint(config, version.version)
        path = plan.cells_dir / f"{cell.key}.json"
        previous = read_cell(path)
        if (not plan.force and previous and previous.get("status") == "done"
                and previous.get("fingerprint") == fingerprint):
            log.info("cell %s: finished earlier, not retrained", cell.key)
            records.append(previous)
            actions[cell.key] = "skipped"
            continue
        log.info("cell %s: training (fingerprint %s)", cell.key, fingerprint)
        try:
            record = run_cell(plan, cell, version.version, fingerprint, config)
            actions[cell.key] = "trained"
        except (FerError, RuntimeError, ValueError) as exc:
            log.error("cell %s failed: %s", cell.key, exc)
            record = {"cell": dataclasses.asdict(cell), "status": "failed", "fingerprint": fingerprint,
                      "error": f"{type(exc).__name__}: {exc}"}
            actions[cell.key] = "failed"
        _write_json(path, record)
        records.append(record)
        write_outputs(plan, dataset, records, actions)  # the table so far, after every trained cell
    return write_outputs(plan, dataset, records, actions)


def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    info["description"] = (f"{os.cpu_count()}-core CPU" if not torch.cuda.is_available()
                           else f"{torch.cuda.get_device_name(0)} GPU, {os.cpu_count()} CPU cores")
    return info


def write_outputs(plan: BenchmarkPlan, dataset: dict, records: list[dict], actions: dict) -> dict:
    rows = aggregate(records, plan.methods, plan.variants)
    dataset_version = dataset["version"]
    summary = {"name": plan.name, "dataset": plan.dataset, "dataset_version": dataset_version,
               "dataset_info": dataset,
               "methods": list(plan.methods), "variants": list(plan.variants), "seeds": list(plan.seeds),
               "config_file": plan.config_file, "overrides": [list(o) for o in plan.overrides],
               "machine": machine_info(), "harness_version": STAGE_VERSION,
               "written": time.strftime("%Y-%m-%d %H:%M:%S"), "actions": actions, "table": rows,
               "cells": records}
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(plan.out_dir / f"{plan.name}.json", summary)
    (plan.out_dir / f"{plan.name}.md").write_text(format_markdown(summary))
    write_csv(rows, plan.out_dir / f"{plan.name}.csv")
    write_plot(rows, plan.methods, plan.variants, plan.out_dir / f"{plan.name}.png",
               f"{plan.dataset} ({dataset_version}), seeds {','.join(map(str, plan.seeds))}")
    return summary


# ---------------------------------------------------------------------------------------------- CLI
def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def build_plan(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> BenchmarkPlan:
    from training.methods import method_names

    options, common, per_method = load_benchmark_file(args.config)
    methods = _csv(args.methods)
    unknown = [m for m in methods if m not in method_names()]
    if unknown or not methods:
        raise ConfigError(f"unknown methods {unknown or methods}; valid choices: {', '.join(method_names())}")
    stray = sorted(set(per_method) - set(method_names()))
    if stray:
        raise ConfigError(f"benchmark config names unknown methods {stray}; valid: {', '.join(method_names())}")
    try:
        seeds = tuple(int(s) for s in _csv(args.seeds))
    except ValueError as exc:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from exc
    variants = tuple(_csv(args.noise))
    if not seeds or not variants:
        raise ConfigError("give at least one noise variant (--noise) and one seed (--seeds)")
    name = args.name or str(options.get("name", "benchmark_noise_{dataset}")).format(dataset=args.dataset)
    runs_root = Path(args.runs_root or Path(os.environ.get("FER_RUNS") or PROJECT_ROOT / "runs") / "benchmarks")
    return BenchmarkPlan(args.dataset, tuple(methods), variants, seeds, name, Path(args.out), runs_root,
                         common, per_method, tuple(overrides), args.config, args.force)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    parser = argparse.ArgumentParser(prog="python -m training.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--methods", default="baseline,ldl_alsg,lanet,soft,ldlva", help="comma-separated")
    parser.add_argument("--noise", default="clean", help="comma-separated noise variants, e.g. clean,sym-0.30")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--config", default=None, help="benchmark config (e.g. training/configs/benchmark_tiny.yaml)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (default bench/results)")
    parser.add_argument("--name", default=None, help="output file stem (default from the config)")
    parser.add_argument("--runs-root", default=None, help="where cell runs go (default runs/benchmarks)")
    parser.add_argument("--force", action="store_true", help="retrain finished cells too")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="training-config override for every cell (like training.train --set)")
    args = parser.parse_args(argv)
    overrides = []
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides.append(tuple(item.split("=", 1)))
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args, overrides = parse_args(argv)
        summary = run_benchmark(build_plan(args, overrides))
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_markdown(summary))
    failed = [k for k, a in summary["actions"].items() if a == "failed"]
    print(f"cells: {sum(a == 'trained' for a in summary['actions'].values())} trained, "
          f"{sum(a == 'skipped' for a in summary['actions'].values())} already done, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
