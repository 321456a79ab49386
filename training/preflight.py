"""The trainer's checks that run before any work: names that become paths, settings a range alone does not
decide (or that the config builder may not bound yet), and the combinations that need the opened version.

    check_settings(config)                 # first thing in engine.setup: names, numbers, choices
    check_against_version(config, version) # right after the version is opened: sizes against the stored crops
    check_run_dir(config, run_dir)         # the run folder lies inside the runs root

Every failure is one ConfigError line naming the key, the bad value and what is valid.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.contract.errors import ConfigError
from pipeline.contract.names import inside_root, plain_name

SEED_MAX = 2 ** 63 - 1         # torch.manual_seed takes a 64-bit integer
SIZE_MAX = 4096                # no crop store holds larger images


def _at_least(key: str, value, low, high=None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key} {value!r} is out of range: it must be {bound}")


def _positive(key: str, value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} {value!r} is out of range: it must be a finite number > 0")


def check_names(config) -> None:
    """Every name that becomes part of a path: dataset, version, noise variant, method, run id."""
    from training.methods import method_names

    plain_name("dataset", config.dataset)
    if config.version != "latest":
        plain_name("version id (version)", config.version)
    plain_name("noise variant (--noise)", config.noise)
    plain_name("method (--method)", config.method, method_names())
    if config.runtime.run_id is not None:
        plain_name("run id (runtime.run_id)", config.runtime.run_id)


def check_settings(config) -> None:
    """Numbers the engine relies on, checked before any data is read or any model built."""
    check_names(config)
    o, s, d, r = config.optim, config.schedule, config.data, config.runtime
    for key, value in (("epochs", config.epochs), ("batch_size", config.batch_size),
                       ("data.eval_batch_size", d.eval_batch_size), ("data.image_size", d.image_size),
                       ("data.groups_per_batch", d.groups_per_batch), ("runtime.log_every", r.log_every),
                       ("runtime.eval_every", r.eval_every), ("data.prefetch_factor", d.prefetch_factor)):
        _at_least(key, value, 1)
    _at_least("data.image_size", d.image_size, 1, SIZE_MAX)
    _at_least("data.resize", d.resize, 0, SIZE_MAX)
    for key, value in (("data.num_workers", d.num_workers), ("data.au_neighbors", d.au_neighbors),
                       ("data.landmark_neighbors", d.landmark_neighbors), ("runtime.threads", r.threads),
                       ("runtime.max_steps", r.max_steps), ("runtime.ckpt_every_steps", r.ckpt_every_steps),
                       ("optim.weight_decay", o.weight_decay), ("optim.grad_clip", o.grad_clip),
                       ("schedule.warmup_epochs", s.warmup_epochs), ("data.color_jitter", d.color_jitter)):
        _at_least(key, value, 0)
    _positive("optim.lr", o.lr)
    _at_least("runtime.seed", r.seed, 0, SEED_MAX)
    _at_least("optim.momentum", o.momentum, 0, 1)
    _at_least("schedule.min_lr_ratio", s.min_lr_ratio, 0, 1)
    _at_least("data.erasing_p", d.erasing_p, 0, 1)


def check_against_version(config, version) -> None:
    """Settings that depend on the version: the network input must fit in the stored (or resized) crop."""
    source = config.data.resize or version.crop_size
    if config.data.image_size > source:
        where = f"data.resize {config.data.resize}" if config.data.resize else \
            f"the stored crops of {version.dataset} version {version.version} ({version.crop_size} px)"
        raise ConfigError(f"data.image_size {config.data.image_size} is larger than {where}; use "
                          f"data.image_size <= {source} or set data.resize")


def check_run_dir(run_dir: Path) -> Path:
    """The run folder, resolved, refused when it lies outside its runs root (a link pointing away, say)."""
    return inside_root("run folder", Path(run_dir).parent, run_dir)
