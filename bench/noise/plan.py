"""What a noise benchmark runs: its cells, each cell's resolved training config and its fingerprint."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.contract.errors import ConfigError

HARNESS_VERSION = "1.0.0"   # part of every cell fingerprint: a change retrains every cell
PROJECT_ROOT = Path(__file__).resolve().parents[2]
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
    text = json.dumps({"config": values, "dataset_version": dataset_version, "harness": HARNESS_VERSION},
                      sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
