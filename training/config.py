"""Run configuration: dataclass defaults <- training/configs/<method>.yaml <- --config FILE <- `--set` overrides.

The resolved configuration is one frozen `TrainConfig`, built by the project's one builder
(pipeline.contract.config.build_config); it is saved beside every output (config.yaml) and inside every
checkpoint. Overrides address a key by its dotted path (`optim.lr`, `method_config.lam`; the command line's
shortcut flags such as `--lr` are declared aliases of such paths in training.train.TRAIN_ALIASES); values are
parsed as YAML (`1e-3`, `true`, `[1, 2]`). Every numeric key has a declared range (`bounded`, listed by
`declared_ranges(TrainConfig)`), checked before any data is read. Method-specific options live in
`method_config` and are validated against the method's `config_class`; a method config with fields
`backbone` / `backbone_weights` gets them from `model.backbone` / `model.weights` unless it sets them itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipeline.contract import config as contract_config
from pipeline.contract.errors import ConfigError, choices_message
from pipeline.contract.ranges import SEED_MAX, bounded

CONFIG_VERSION = "1"
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("linear", "cosine", "constant", "step")
SAMPLERS = ("shuffle", "balanced", "groups")
BIG = 10**12                        # upper bound of counts that have no natural one (steps)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"              # adam | adamw | sgd
    lr: float = bounded(1e-3, 0, 10, lo_open=True)
    weight_decay: float = bounded(0.0, 0, 1)
    momentum: float = bounded(0.9, 0, 1)                    # sgd only
    nesterov: bool = False          # sgd only
    betas: tuple = bounded((0.9, 0.999), 0, 1, hi_open=True)  # adam/adamw
    grad_clip: float = bounded(0.0, 0, None)                # max global grad norm; 0 disables


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "linear"            # linear (decay to min_lr_ratio) | cosine (with warmup) | constant | step
    warmup_epochs: float = bounded(0.0, 0, 100_000)         # linear warm-up from 0, in (fractional) epochs
    min_lr_ratio: float = bounded(0.0, 0, 1)                # final lr / base lr
    milestones: tuple = bounded((), 0, 100_000)             # step only: epochs at which the lr is multiplied by `gamma`
    gamma: float = bounded(0.1, 0, 1, lo_open=True)         # step only


@dataclass(frozen=True)
class DataConfig:
    image_size: int = bounded(224, 16, 4096)  # network input side (random crop when training, centre crop otherwise)
    resize: int = bounded(0, 0, 8192)         # resize stored crops to this side before cropping; 0: stored size
    sampler: str = "shuffle"        # shuffle | balanced (progressive) | groups (forced when the method needs groups)
    num_workers: int = bounded(4, 0, 256)
    pin_memory: bool = True
    prefetch_factor: int = bounded(4, 1, 1024)
    persistent_workers: bool = True
    flip: bool = True
    random_crop: bool = True
    color_jitter: float = bounded(0.4, 0, 1)  # brightness/contrast/saturation factors drawn from [1-j, 1+j]; 0 disables
    erasing_p: float = bounded(0.5, 0, 1)     # random-erasing probability; 0 disables
    erasing_scale: tuple = bounded((0.02, 0.25), 0, 1)
    erasing_ratio: tuple = bounded((0.3, 3.3), 0, 100, lo_open=True)
    eval_batch_size: int = bounded(256, 1, 65_536)
    groups_per_batch: int = bounded(32, 1, 65_536)   # LDL-ALSG grouped batches (per process)
    au_neighbors: int = bounded(4, 0, 1024)
    landmark_neighbors: int = bounded(4, 0, 1024)
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
    seed: int = bounded(0, 0, SEED_MAX)              # 0..2**32-1
    threads: int = bounded(0, 0, 4096)               # torch CPU threads; 0 keeps torch's default
    progress: bool = True           # tqdm bars (rank 0)
    tensorboard: bool = True
    log_every: int = bounded(20, 1, BIG)             # optimiser steps between metrics.jsonl records
    eval_every: int = bounded(1, 1, BIG)             # epochs between evaluations (the last epoch is always evaluated)
    ckpt_every_steps: int = bounded(0, 0, BIG)       # extra mid-epoch checkpoints; 0: only at epoch ends and at the end
    max_steps: int = bounded(0, 0, BIG)              # stop (with a checkpoint) after this many steps; 0: no limit
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
    epochs: int = bounded(40, 1, 100_000)
    batch_size: int = bounded(64, 1, 65_536)         # per process
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


def build_dataclass(cls: type, values: dict, prefix: str = ""):
    """Instantiate a (frozen) dataclass from a dict, coercing types; unknown keys raise ConfigError.

    The one builder of the project (pipeline.contract.config): nested sections become their dataclasses.
    """
    return contract_config.build_dataclass(cls, values, prefix)


def existing_config_file(path: str | Path) -> Path:
    """`path` when it is a file, else ConfigError naming the bundled configs."""
    if not Path(path).is_file():
        known = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(f"config file not found: {path}; bundled configs in {CONFIGS_DIR}: {', '.join(known)}")
    return Path(path)


def load_yaml(path: str | Path) -> dict:
    """A YAML layer (a mapping, by the safe loader); a missing file names the bundled configs."""
    return contract_config.load_yaml(existing_config_file(path))


def method_config_fields(method: str) -> list[str]:
    from training.methods import method_class
    cls = method_class(method).config_class
    return [f.name for f in dataclasses.fields(cls)] if cls is not None else []


def resolve_config(method: str, dataset: str | None = None, noise: str | None = None,
                   config_file: str | Path | None = None, overrides: list[tuple[str, object]] = (),
                   base: dict | None = None) -> TrainConfig:
    """Defaults <- configs/<method>.yaml <- config_file <- dataset/method/noise <- overrides (dotted keys).

    `base` (e.g. a checkpoint's resolved config when resuming) replaces the first two layers.
    """
    method_config_fields(method)  # validates the method name
    files = []
    if base is None and (CONFIGS_DIR / f"{method}.yaml").is_file():
        files.append(CONFIGS_DIR / f"{method}.yaml")
    if config_file is not None:
        files.append(existing_config_file(config_file))
    chosen = [(key, value) for key, value in (("method", method), ("dataset", dataset), ("noise", noise))
              if value is not None]
    config = contract_config.build_config(TrainConfig, files, [*chosen, *overrides], base=base)
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


def save_config(config: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def config_from_dict(values: dict) -> TrainConfig:
    return build_dataclass(TrainConfig, values)
