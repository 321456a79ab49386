"""The prepare configuration: what `make prepare` takes, and the frozen stage configs it resolves to.

Layers (pipeline.contract.config.build_config, the one builder, shared with the trainer): dataclass defaults
< a YAML file (`--config`) < `--set section.key=value` (and the CLI's shortcut flags, PREPARE_ALIASES in
flows/__main__.py) < explicit keyword fields. Numeric keys carry declared ranges (`bounded`).
Sections (`align`, `landmarks`, `graphs`, ...) hold only the keys a user set; `resolve_stage_configs` lays them
over each stage's config dataclass, coerces every value to its field's type and validates it, so a wrong
option fails before any work.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.contract.config import build_config, build_dataclass, coerce
from pipeline.contract.errors import ConfigError, choices_message
from pipeline.contract.ranges import SEED_MAX, bounded
from pipeline.specs import DatasetSpec, load_spec, resolve_root

DEFAULT_DETECTOR = {"detect": "dlib", "given": "given", "prealigned": "prealigned"}
DEFAULT_SPACES = ("au", "landmarks", "va")
RUNNERS = ("serial", "threads", "processes")   # pipeline.prepare.make_mapper builds each


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `make prepare` takes; nested sections are the stage configs' fields.

    Precedence: these defaults < a YAML file (`--config`) < command-line `--set section.key=value`.
    """

    dataset: str = "synthetic"
    root: str | None = None
    num_classes: int | None = bounded(None, 7, 8)     # None: the spec's
    source: dict = field(default_factory=dict)        # adapter options (synthetic: n, seed, size, ...)
    shard_size: int = bounded(250, 1, 5000)      # images per task (100-500: one task per image is too costly)
    max_workers: int = bounded(2, 1, 1024)       # bounded concurrency of shard tasks
    runner: str = "processes"               # where shards run: serial | threads | processes (pipeline.prepare)
    process_min_images: int = bounded(2000, 0, 10**9)   # processes: a stage with fewer pending images runs on threads
    align: dict = field(default_factory=dict)         # pipeline.stages.faces.AlignConfig fields
    landmarks: dict = field(default_factory=dict)     # pipeline.stages.landmarks.LandmarkConfig fields
    action_units: dict = field(default_factory=dict)  # pipeline.stages.action_units.AUConfig fields
    graphs: dict = field(default_factory=dict)        # pipeline.stages.graphs.GraphConfig fields + spaces
    noise: dict = field(default_factory=dict)         # pipeline.stages.noise config fields (variants, ...)
    pseudo_va: dict = field(default_factory=dict)     # pipeline.stages.pseudo_va.PseudoVAConfig fields (checkpoint)
    report: bool = True
    seed: int = bounded(0, 0, SEED_MAX)
    lock_wait_s: float = bounded(0.0, 0, 7 * 86400)   # wait for another prepare of the dataset; 0: refuse at once

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ConfigError(choices_message("runner", self.runner, RUNNERS))


def load_prepare_config(path: str | Path | None = None, overrides: list[str] = (), **fields) -> PrepareConfig:
    """Defaults < YAML file < `section.key=value` overrides < explicit keyword fields (None ones skipped)."""
    return build_config(PrepareConfig, [path], overrides, fields=fields, what="prepare config file")


@dataclass(frozen=True)
class StageConfigs:
    """The frozen stage configurations a PrepareConfig resolves to for one dataset spec."""

    spec: DatasetSpec
    align: object
    landmarks: object
    action_units: object
    graphs: object
    spaces: tuple[str, ...]
    noise: tuple[str, ...]      # noisy-label variant names
    source: dict = field(default_factory=dict)   # adapter options, coerced to their types
    pseudo_va: object = None    # pipeline.stages.pseudo_va.PseudoVAConfig (runs when its checkpoint is set)


def _graph_config(fields: dict):
    """graphs section: KnnConfig fields (k, backend, metric, ...) and GraphConfig fields, plus `spaces`."""
    from pipeline.knn import KnnConfig
    from pipeline.stages.graphs import DEFAULT_SIGMA, GraphConfig

    from pipeline.contract.graphs import check_space_name

    spaces = tuple(check_space_name(s) for s in coerce(fields.pop("spaces", DEFAULT_SPACES), tuple[str, ...],
                                                         "graphs.spaces"))
    knn_names = {f.name for f in dataclasses.fields(KnnConfig)}
    graph_names = {f.name for f in dataclasses.fields(GraphConfig)} - {"knn"}
    unknown = sorted(set(fields) - knn_names - graph_names)
    if unknown:
        raise ConfigError(choices_message("config key in graphs", unknown[0], sorted(knn_names | graph_names)))
    knn = build_dataclass(KnnConfig, {k: v for k, v in fields.items() if k in knn_names}, "graphs")
    rest = {k: v for k, v in fields.items() if k in graph_names}
    if "sigma" in rest:
        if not isinstance(rest["sigma"], dict):
            raise ConfigError(f"config key 'graphs.sigma': give a mapping of space to sigma, got {rest['sigma']!r}")
        rest["sigma"] = {**DEFAULT_SIGMA, **rest["sigma"]}
    return build_dataclass(GraphConfig, {**rest, "knn": knn}, "graphs"), spaces


def _noise_variants(fields: dict) -> tuple[str, ...]:
    """noise section: an explicit `variants` list, or NoiseConfig fields (kinds x rates x seeds)."""
    from pipeline.stages.noise import NoiseConfig, parse_variant, variant_names

    if "variants" in fields:
        names = list(coerce(fields.pop("variants"), tuple[str, ...], "noise.variants"))
        if fields:
            raise ConfigError(f"noise: give either variants or {sorted(fields)}, not both")
        if "clean" not in names:
            names.insert(0, "clean")
    else:
        names = variant_names(build_dataclass(NoiseConfig, fields, "noise"))
    return tuple(parse_variant(n).name for n in names)


def _source_options(spec: DatasetSpec, options: dict) -> dict:
    """The adapter options, coerced (synthetic: SyntheticConfig fields); other adapters take none."""
    if not options:
        return {}
    if spec.adapter != "synthetic":
        raise ConfigError(f"adapter {spec.adapter!r} takes no source options; got {sorted(options)}")
    from pipeline.synthetic.generator import SyntheticConfig

    names = {f.name for f in dataclasses.fields(SyntheticConfig)} - {"num_classes"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ConfigError(choices_message("config key in source", unknown[0], sorted(names)))
    built = build_dataclass(SyntheticConfig, {**spec.options, **options, "num_classes": spec.num_classes}, "source")
    return {key: getattr(built, key) for key in options}


def resolve_stage_configs(config: PrepareConfig) -> StageConfigs:
    """Build and validate every stage's config at once, so a bad option fails before any work."""
    from pipeline.stages.action_units import AUConfig
    from pipeline.stages.faces import AlignConfig
    from pipeline.stages.landmarks import LandmarkConfig

    overrides = {"num_classes": config.num_classes} if config.num_classes else None
    spec = load_spec(config.dataset, overrides=overrides)
    align = build_dataclass(AlignConfig, {"detector": DEFAULT_DETECTOR[spec.alignment], **config.align}, "align")
    landmarks = build_dataclass(LandmarkConfig, config.landmarks, "landmarks")
    action_units = build_dataclass(AUConfig, config.action_units, "action_units")
    graphs, spaces = _graph_config(dict(config.graphs))
    noise = _noise_variants(dict(config.noise))
    source = _source_options(spec, dict(config.source))
    from pipeline.stages.pseudo_va import PseudoVAConfig

    pseudo_va = build_dataclass(PseudoVAConfig, config.pseudo_va, "pseudo_va")
    return StageConfigs(spec, align, landmarks, action_units, graphs, spaces, noise, source, pseudo_va)


def check_dataset_root(config: PrepareConfig, stages: StageConfigs) -> None:
    """A missing dataset root fails here, at once (the synthetic set without a root lives in the cache)."""
    if stages.spec.adapter == "synthetic" and config.root is None and not os.environ.get("FER_DATA_ROOT"):
        return
    resolve_root(stages.spec, config.root)


def check_backends(stages: StageConfigs) -> None:
    """Every per-image stage's `check_backend`: a missing checkpoint or binary fails before any image is read."""
    from pipeline.stages import action_units, faces, landmarks, pseudo_va

    faces.check_backend(stages.align)
    landmarks.check_backend(stages.landmarks)
    action_units.check_backend(stages.action_units)
    if stages.pseudo_va is not None:
        pseudo_va.check_backend(stages.pseudo_va)
