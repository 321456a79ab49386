"""Run configuration: dataclass defaults <- training/configs/<method>.yaml <- --config FILE <- CLI overrides.

The resolved configuration is one frozen `TrainConfig`; it is saved beside every output (config.yaml) and
inside every checkpoint. Overrides address any key by its dotted path (`optim.lr`, `method_config.lam`) or,
when unique, by its leaf name (`lr`, `batch_size`, `lam`); values are parsed as YAML (`1e-3`, `true`, `[1, 2]`).
Method-specific options live in `method_config` and are validated against the method's `config_class`;
a method config with fields `backbone` / `backbone_weights` gets them from `model.backbone` / `model.weights`
unless it sets them itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipeline.contract import config as contract_config
from pipeline.contract.errors import ConfigError, choices_message

CONFIG_VERSION = "1"
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("linear", "cosine", "constant", "step")
SAMPLERS = ("shuffle", "balanced", "groups")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"              # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9           # sgd only
    nesterov: bool = False          # sgd only
    betas: tuple = (0.9, 0.999)     # adam/adamw
    grad_clip: float = 0.0          # max global grad norm; 0 disables


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "linear"            # linear (decay to min_lr_ratio) | cosine (with warmup) | constant | step
    warmup_epochs: float = 0.0      # linear warm-up from 0, in (fractional) epochs
    min_lr_ratio: float = 0.0       # final lr / base lr
    milestones: tuple = ()          # step only: epochs at which the lr is multiplied by `gamma`
    gamma: float = 0.1              # step only


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 224           # network input side (random crop when training, centre crop otherwise)
    resize: int = 0                 # resize stored crops to this side before cropping; 0 keeps the stored size
    sampler: str = "shuffle"        # shuffle | balanced (progressive) | groups (forced when the method needs groups)
    num_workers: int = 4
    pin_memory: bool = True
    prefetch_factor: int = 4
    persistent_workers: bool = True
    flip: bool = True
    random_crop: bool = True
    color_jitter: float = 0.4       # brightness/contrast/saturation factors drawn from [1-j, 1+j]; 0 disables
    erasing_p: float = 0.5          # random-erasing probability; 0 disables
    erasing_scale: tuple = (0.02, 0.25)
    erasing_ratio: tuple = (0.3, 3.3)
    eval_batch_size: int = 256
    groups_per_batch: int = 32      # LDL-ALSG grouped batches (per process)
    au_neighbors: int = 4
    landmark_neighbors: int = 4
    au_graph: str = "au"            # graphs/<name>.parquet of the AU space
    landmark_graph: str = "landmarks"


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"      # resnet18 | resnet50 | resnet_small | resnet_small_w32 | tiny
    weights: str | None = None      # initial backbone weights (e.g. an MS-Celeb-1M checkpoint)


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    recipe_device: str = "any"      # what the recipe is written for: cuda (the paper recipes) | cpu | any
    bf16: bool = True               # bf16 autocast (CUDA only)
    channels_last: bool = True      # CUDA only
    compile: bool = False           # torch.compile the training step
    deterministic: bool = False
    seed: int = 0
    threads: int = 0                # torch CPU threads; 0 keeps torch's default
    progress: bool = True           # tqdm bars (rank 0)
    tensorboard: bool = True
    log_every: int = 20             # optimiser steps between metrics.jsonl records
    eval_every: int = 1             # epochs between evaluations (the last epoch is always evaluated)
    ckpt_every_steps: int = 0       # extra mid-epoch checkpoints; 0: only at epoch ends and at the end
    max_steps: int = 0              # stop (with a checkpoint) after this many optimiser steps; 0: no limit
    ddp_find_unused: bool = True
    runs_root: str | None = None    # default: <project>/runs or $FER_RUNS
    run_id: str | None = None       # default: <dataset>-<method>-<noise>-<timestamp>
    resume: str | None = None       # checkpoint path, or a run directory (uses its checkpoints/last.pt)
    report: bool = True             # write report.md with plots at the end


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "synthetic"
    version: str = "latest"
    noise: str = "clean"
    method: str = "baseline"
    epochs: int = 40
    batch_size: int = 64            # per process
    artifacts_root: str | None = None
    manifests_root: str | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    method_config: dict = field(default_factory=dict)
    config_version: str = CONFIG_VERSION

    def to_dict(self) -> dict:
        return _plain(asdict(self))


def _plain(value):
    """Tuples -> lists, recursively, so YAML/JSON dumps are plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


SECTIONS: dict[str, type] = {"optim": OptimConfig, "schedule": ScheduleConfig, "data": DataConfig,
                             "model": ModelConfig, "runtime": RuntimeConfig}


def build_dataclass(cls: type, values: dict, prefix: str = ""):
    """Instantiate a (frozen) dataclass from a dict, coercing types; unknown keys raise ConfigError.

    The one builder of the project (pipeline.contract.config): nested sections become their dataclasses.
    """
    return contract_config.build_dataclass(cls, values, prefix)


merge = contract_config.merge


def load_yaml(path: str | Path) -> dict:
    """A YAML layer (a mapping); a missing file names the bundled configs."""
    if not Path(path).is_file():
        known = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(f"config file not found: {path}; bundled configs in {CONFIGS_DIR}: {', '.join(known)}")
    return contract_config.load_yaml(path)


def _leaf_paths(method_fields: list[str]) -> dict[str, list[str]]:
    """leaf name -> dotted paths having it (top-level keys, section keys, method config fields)."""
    paths: dict[str, list[str]] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS:
            for sub in dataclasses.fields(SECTIONS[f.name]):
                paths.setdefault(sub.name, []).append(f"{f.name}.{sub.name}")
        elif f.name != "method_config":
            paths.setdefault(f.name, []).append(f.name)
    for name in method_fields:
        paths.setdefault(name, []).append(f"method_config.{name}")
    return paths


def apply_override(config: dict, key: str, raw_value: str, method_fields: list[str] = ()) -> dict:
    """Set one key (dotted path or unique leaf name; dashes read as underscores) from a CLI string."""
    key = key.strip().lstrip("-").replace("-", "_")
    value = contract_config.parse_value(raw_value)
    if "." not in key:
        candidates = _leaf_paths(list(method_fields)).get(key, [])
        if not candidates:
            known = sorted(_leaf_paths(list(method_fields)))
            raise ConfigError(choices_message("config key", key, known) + " (or a dotted path like optim.lr)")
        if len(candidates) > 1:
            raise ConfigError(f"config key {key!r} is ambiguous: {', '.join(candidates)}; use the dotted path")
        key = candidates[0]
    head = key.split(".")[0]
    if "." in key and head not in SECTIONS and head != "method_config":
        raise ConfigError(f"config key {key!r}: {head!r} is not a section; sections: "
                          f"{', '.join([*SECTIONS, 'method_config'])}")
    return contract_config.set_dotted(config, key, value)


def method_config_fields(method: str) -> list[str]:
    from training.methods import method_class
    cls = method_class(method).config_class
    return [f.name for f in dataclasses.fields(cls)] if cls is not None else []


def resolve_config(method: str, dataset: str | None = None, noise: str | None = None,
                   config_file: str | Path | None = None, overrides: list[tuple[str, str]] = (),
                   base: dict | None = None) -> TrainConfig:
    """Defaults <- configs/<method>.yaml <- config_file <- dataset/method/noise <- overrides.

    `base` (e.g. a checkpoint's resolved config when resuming) replaces the first two layers.
    """
    fields = method_config_fields(method)  # also validates the method name
    if base is not None:
        values = dict(base)
    else:
        values = TrainConfig().to_dict()
        method_yaml = CONFIGS_DIR / f"{method}.yaml"
        if method_yaml.is_file():
            values = merge(values, load_yaml(method_yaml))
    if config_file is not None:
        values = merge(values, load_yaml(config_file))
    values["method"] = method
    if dataset is not None:
        values["dataset"] = dataset
    if noise is not None:
        values["noise"] = noise
    for key, raw in overrides:
        values = apply_override(values, key, raw, fields)
    config = build_dataclass(TrainConfig, values)
    build_method_config(config)  # validate method options now, not after loading data
    return config


def build_method_config(config: TrainConfig):
    """The method's frozen config dataclass from `method_config`, with backbone defaults from `model`."""
    from training.methods import method_class
    cls = method_class(config.method).config_class
    if cls is None:
        return dict(config.method_config)
    values = dict(config.method_config)
    names = {f.name for f in dataclasses.fields(cls)}
    if "backbone" in names and "backbone" not in values:
        values["backbone"] = config.model.backbone
    if "backbone_weights" in names and "backbone_weights" not in values:
        values["backbone_weights"] = config.model.weights
    return build_dataclass(cls, values, "method_config")


def validate_choices(config: TrainConfig) -> None:
    """Fail at once on names with a fixed set of choices."""
    if config.optim.name not in OPTIMIZERS:
        raise ConfigError(choices_message("optimizer (optim.name)", config.optim.name, OPTIMIZERS))
    if config.schedule.name not in SCHEDULES:
        raise ConfigError(choices_message("schedule (schedule.name)", config.schedule.name, SCHEDULES))
    if config.data.sampler not in SAMPLERS:
        raise ConfigError(choices_message("sampler (data.sampler)", config.data.sampler, SAMPLERS))
    if config.epochs < 1 or config.batch_size < 1:
        raise ConfigError(f"epochs ({config.epochs}) and batch_size ({config.batch_size}) must be >= 1")


def save_config(config: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def config_from_dict(values: dict) -> TrainConfig:
    return build_dataclass(TrainConfig, values)
