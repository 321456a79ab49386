"""The audit's options, the fold runs' training config, and the audit hash that addresses the outputs.

Options come from the one config builder (pipeline.contract.config.build_config): dataclass defaults <
`--set key=value`; the command line's --dataset/--noise/--folds/--config are aliases of the keys of the same
name. Trainer keys go under `train.` (`--set train.epochs=20`) and are layered over the recipe file
(`config`, a trainer config) by training.config.resolve_config, exactly as `make train` layers them.

The audit hash covers what changes the result: the version id, the variant, folds, seed, method, graph
spaces, cleanlab's filter and the whole resolved training config, less the keys that only change how a run
reports itself (progress bars, TensorBoard, paths). Same hash, same audit: a rerun finds its finished folds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.contract.config import build_config, plain
from pipeline.contract.errors import ConfigError, choices_message
from pipeline.contract.names import plain_name

AUDIT_VERSION = "1.0"
DEFAULT_RECIPE = str(Path(__file__).resolve().parent / "recipe_cpu.yaml")
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence")
# Runtime keys that never change a fold's result: left out of the audit hash.
PRESENTATION = ("progress", "tensorboard", "report", "log_every", "eval_every", "runs_root", "run_id", "resume",
                "threads", "ckpt_every_steps")


@dataclass(frozen=True)
class AuditConfig:
    dataset: str = "synthetic"
    version: str = "latest"          # a version id, or latest
    noise: str = "clean"             # the label variant audited
    folds: int = 5                   # K of the K-fold out-of-fold probabilities
    seed: int = 0                    # fold assignment and every fold run's runtime.seed
    method: str = "baseline"         # the trainer method of the fold runs
    config: str = DEFAULT_RECIPE     # the fold runs' recipe: a trainer config file
    train: dict = field(default_factory=dict)   # trainer keys over the recipe (train.epochs=20, train.optim.lr=...)
    graphs: tuple = ()               # graph spaces scored; empty: every space the version has
    filter_by: str = "prune_by_noise_rate"      # cleanlab.filter.find_label_issues's rule for the flags
    jobs: int = 1                    # folds trained at once (processes)
    gallery: int = 24                # most suspect faces shown in report.html
    neighbours_shown: int = 4        # neighbours shown beside each of them, per graph space
    artifacts_root: str | None = None
    manifests_root: str | None = None

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))


def audit_config(overrides: list) -> AuditConfig:
    """AuditConfig from `key=value` strings or (key, value) pairs (the one builder), checked."""
    config = build_config(AuditConfig, overrides=overrides)
    plain_name("dataset", config.dataset)
    plain_name("variant", config.noise)
    plain_name("method", config.method)
    if config.folds < 2:
        raise ConfigError(f"folds {config.folds}: out-of-fold probabilities need at least 2 folds")
    if config.filter_by not in FILTERS:
        raise ConfigError(choices_message("filter_by", config.filter_by, FILTERS))
    if config.jobs < 1 or config.gallery < 1 or config.neighbours_shown < 0:
        raise ConfigError(f"jobs ({config.jobs}) and gallery ({config.gallery}) must be >= 1, "
                          f"neighbours_shown ({config.neighbours_shown}) >= 0")
    if not Path(config.config).is_file():
        raise ConfigError(f"training recipe (config) not found: {config.config}")
    return config


def train_overrides(config: AuditConfig) -> list[tuple[str, object]]:
    """The `train.` keys as (dotted key, value) pairs for training.config.resolve_config."""
    out: list[tuple[str, object]] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        else:
            out.append((prefix, value))

    walk("", config.train)
    return out


def training_config(config: AuditConfig, version_id: str, variant: str, extra: list[tuple[str, object]] = ()):
    """The resolved TrainConfig of a run on `variant` under the audit's recipe (training.config's layers)."""
    from training.config import resolve_config

    base = [("version", version_id), ("runtime.seed", config.seed)]
    for key in ("artifacts_root", "manifests_root"):
        if getattr(config, key):
            base.append((key, getattr(config, key)))
    return resolve_config(config.method, config.dataset, variant, config.config,
                          base + train_overrides(config) + list(extra))


def audit_hash(config: AuditConfig, version_id: str, graphs: list[str]) -> str:
    """12 hex digits over everything that changes the audit's result (see the module docstring)."""
    train = training_config(config, version_id, config.noise).to_dict()
    for key in PRESENTATION:
        train["runtime"].pop(key, None)
    for key in ("artifacts_root", "manifests_root"):
        train.pop(key, None)
    payload = {"audit_version": AUDIT_VERSION, "dataset": config.dataset, "version": version_id,
               "noise": config.noise, "folds": config.folds, "seed": config.seed, "method": config.method,
               "graphs": sorted(graphs), "filter_by": config.filter_by, "train": train}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
