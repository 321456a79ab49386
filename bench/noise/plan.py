"""What a noise benchmark runs: its cells, each cell's resolved training config and its fingerprint."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.contract.errors import ConfigError

HARNESS_VERSION = "1.1.0"   # part of every cell fingerprint: a change retrains every cell (1.1: diagnostics)
EQUAL_IMAGES = "@images"    # method label suffix of the equal-images-seen control, e.g. "baseline@images"
# Any other `<method>@<name>` label is a named row: <method> trained with the benchmark config's
# `methods.<method>@<name>` layer on top of its own and of the --set overrides (e.g. ldl_alsg@lam0: the grouped
# batches, guidance off; baseline@scratch: model.weights null, the from-scratch reference of a pretrained table).
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

    @property
    def trainer_method(self) -> str:
        """The trainer's method name: the label without its `@...` suffix (EQUAL_IMAGES or a named row)."""
        return trainer_method(self.method)

    @property
    def equal_images(self) -> bool:
        return self.method.endswith(EQUAL_IMAGES)


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
    jobs: int = 1                    # cells trained at once, each in its own process (harness._run_parallel)
    command: str | None = None       # the command line, shown in the Markdown
    notes: str | None = None         # hand-written Markdown appended to the results' Markdown (benchmark: notes:)
    aggregate_only: bool = False     # train nothing: write the table of the cells already finished
    controls: tuple = ()             # ((method, (row, ...)), ...): the rows each method must beat (benchmark: controls:)

    @property
    def cells_dir(self) -> Path:
        return self.out_dir / f"{self.name}_cells"

    def cells(self) -> list[Cell]:
        return [Cell(m, v, s) for v in self.variants for m in self.methods for s in self.seeds]

    def grouped_methods(self) -> list[str]:
        from training.methods import method_class

        return [m for m in self.methods
                if not m.endswith(EQUAL_IMAGES) and "groups" in method_class(trainer_method(m)).needs]

    def images_factor(self) -> int:
        """Images per training sample per epoch of the grouped methods (1 + K neighbours): the control's stretch.

        The grouped sampler puts every training sample once per epoch in a group as its centre, with
        data.au_neighbors + data.landmark_neighbors neighbours beside it. Every grouped method of the plan
        must see the same number, so one control serves them all.
        """
        grouped = self.grouped_methods()
        if not grouped:
            raise ConfigError(f"an equal-images control ({EQUAL_IMAGES}) needs a grouped method in the plan "
                              f"(e.g. ldl_alsg, ldlva); methods: {', '.join(self.methods)}")
        factors = {m: _images_per_sample(base_config(self, Cell(m, self.variants[0], self.seeds[0])))
                   for m in grouped}
        if len(set(factors.values())) > 1:
            raise ConfigError(f"grouped methods see different images per sample {factors}; give them the same "
                              f"data.au_neighbors + data.landmark_neighbors for one equal-images control")
        return next(iter(factors.values()))


def trainer_method(label: str) -> str:
    """'ldl_alsg@lam0' -> 'ldl_alsg'; 'baseline@images' -> 'baseline'; 'soft' -> 'soft'."""
    return label.split("@", 1)[0]


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


def _images_per_sample(config) -> int:
    return 1 + config.data.au_neighbors + config.data.landmark_neighbors


def images_seen(config, num_train: int) -> int:
    """Training images a cell's run sees: epochs x samples x (1 + K for the grouped sampler)."""
    from training.methods import method_class

    per_sample = _images_per_sample(config) if "groups" in method_class(config.method).needs else 1
    return int(config.epochs * num_train * per_sample)


def base_config(plan: BenchmarkPlan, cell: Cell, extra: list | None = None):
    """The resolved TrainConfig of a cell before any equal-images stretch."""
    from training.config import resolve_config

    method = cell.trainer_method
    overrides = flatten(plan.common) + flatten(plan.per_method.get(method) or {}) + list(plan.overrides)
    if cell.method != method and not cell.equal_images:   # a named row: its own layer on top, after --set
        overrides += flatten(plan.per_method.get(cell.method) or {})  # (e.g. model.weights: null, from scratch)
    overrides += [("runtime.seed", cell.seed), ("runtime.runs_root", str(plan.runs_root))] + list(extra or [])
    return resolve_config(method, plan.dataset, cell.variant, None, overrides)


def cell_config(plan: BenchmarkPlan, cell: Cell, run_id: str | None = None, resume: str | None = None):
    """The resolved TrainConfig of a cell: method yaml <- common <- per-method <- CLI <- cell keys.

    An equal-images control (`<method>@images`) trains `<method>` for images_factor() times the epochs,
    with the schedule's shape stretched alike (warm-up and step milestones scaled by the same factor).
    """
    extra = [("runtime.run_id", run_id)] if run_id else []
    extra += [("runtime.resume", resume)] if resume else []
    config = base_config(plan, cell, extra)
    if not cell.equal_images:
        return config
    factor = plan.images_factor()
    stretch = [("epochs", config.epochs * factor), ("schedule.warmup_epochs", config.schedule.warmup_epochs * factor),
               ("schedule.milestones", [m * factor for m in config.schedule.milestones])]
    return base_config(plan, cell, extra + stretch)


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
