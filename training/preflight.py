"""The trainer's checks that run before any work: names that become paths, the declared ranges
again (for a config made in code, without the builder), and the combinations that need the opened version.

    check_settings(config)                 # first thing in engine.setup: names, numbers, choices
    check_against_version(config, version) # right after the version is opened: sizes against the stored crops
    check_run_dir(config, run_dir)         # the run folder lies inside the runs root

Every failure is one ConfigError line naming the key, the bad value and what is valid.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.contract.errors import ConfigError
from pipeline.contract.names import inside_root, plain_name
from pipeline.contract.ranges import check_declared


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
    """Names, then every declared range (pipeline.contract.ranges), before any data is read or model built."""
    check_names(config)
    check_declared(config)


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
