"""The prepare configuration: what `make prepare` takes, and the frozen stage configs it resolves to.

Layers (pipeline.contract.config.build_config, the one builder, shared with the trainer): dataclass defaults
< a YAML file (`--config`) < `--set section.key=value` (and the CLI's shortcut flags, PREPARE_ALIASES in
flows/__main__.py) < explicit keyword fields. Numeric keys carry declared ranges (`bounded`).
A stage's section (`align`, `landmarks`, `graphs`, ...) holds only the keys a user set; `resolve_stage_configs`
lays each over its registered stage's config (pipeline.stages.base), coercing every value to its field's
type and validating it, so a wrong option fails before any work.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.contract.config import build_config, build_dataclass
from pipeline.contract.errors import ConfigError, choices_message
from pipeline.contract.ranges import SEED_MAX, bounded
from pipeline.specs import DatasetSpec, load_spec, resolve_root

RUNNERS = ("serial", "threads", "processes")   # pipeline.mappers.make_mapper builds each


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
    # the stages' config sections (each stage's config dataclass: pipeline/stages/<stage>.py)
    align: dict = field(default_factory=dict)
    landmarks: dict = field(default_factory=dict)
    action_units: dict = field(default_factory=dict)
    graphs: dict = field(default_factory=dict)
    noise: dict = field(default_factory=dict)
    pseudo_va: dict = field(default_factory=dict)
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
    """The frozen configs a PrepareConfig resolves to for one dataset spec: one per registered stage.

    `stages.align`, `stages.graphs`, ...: a stage's config by its config section's name.
    """

    spec: DatasetSpec
    configs: dict                                # stage name -> resolved config
    stages: tuple = ()                           # every registered Stage, in pipeline order
    source: dict = field(default_factory=dict)   # adapter options, coerced to their types

    @property
    def enabled(self) -> tuple:
        """The stages that run for these configs, in pipeline order."""
        return tuple(stage for stage in self.stages if stage.enabled(self.configs[stage.name]))

    def warm_checks(self) -> tuple:
        """(check, config) of every enabled per-image stage: what a worker process runs once at start."""
        return tuple((s.check, self.configs[s.name]) for s in self.enabled if s.per_image and s.check)

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("spec", "configs", "stages", "source"):
            raise AttributeError(name)
        for stage in self.stages:
            if stage.config_section == name:
                return self.configs[stage.name]
        raise AttributeError(f"no stage has the config section {name!r}")


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
    """Build and validate every registered stage's config at once, so a bad option fails before any work.

    A stage reads its section of the config (`align`, `graphs`, ...; a section PrepareConfig does not
    have gives the stage its defaults) through its `resolve`, else its config dataclass.
    """
    from pipeline.stages.base import registered

    overrides = {"num_classes": config.num_classes} if config.num_classes else None
    spec = load_spec(config.dataset, overrides=overrides)
    stages = registered()
    configs = {}
    for stage in stages:
        fields = dict(getattr(config, stage.config_section, None) or {})
        if stage.resolve is not None:
            configs[stage.name] = stage.resolve(fields, spec)
        else:
            configs[stage.name] = build_dataclass(stage.config, fields, stage.config_section)
    return StageConfigs(spec, configs, stages, _source_options(spec, dict(config.source)))


def check_dataset_root(config: PrepareConfig, stages: StageConfigs) -> None:
    """A missing dataset root fails here, at once (the synthetic set without a root lives in the cache)."""
    if stages.spec.adapter == "synthetic" and config.root is None and not os.environ.get("FER_DATA_ROOT"):
        return
    resolve_root(stages.spec, config.root)


def check_backends(stages: StageConfigs) -> None:
    """Every enabled stage's backend check: a missing checkpoint or binary fails before any image is read."""
    for stage in stages.enabled:
        if stage.check is not None:
            stage.check(stages.configs[stage.name])
