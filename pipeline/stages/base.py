"""A stage is one registered object, in the manner of timm's model registry and DVC's stage list.

Each stage module ends with its `Stage` and registers it:

    STAGE = register_stage(Stage(name="landmarks", version="1.0.0", config=LandmarkConfig, per_image=True,
                                 reads=("faces",), writes=(LANDMARKS,), after=("faces",), check=check_backend,
                                 part=landmarks_part, assemble=...))

The runner (pipeline.prepare), the planner (pipeline.store.plan), the lock record, the worker warm-up
(pipeline.mappers), the report and the Prefect flow loop over `registered()`; nothing else lists stages.
A stage is:

- `name`, `version` (semantic; part of every fingerprint) and `config`, the dataclass of its section of
  the prepare config (`section`, default the name); `resolve` builds the resolved config from the
  section's fields and the dataset spec (default: the dataclass, every value coerced to its field's type);
- `per_image` (work over shards of images, results kept by image content in the part store) or global
  (independent calls over the version folder, e.g. one graph per space);
- `reads` (per-image: the stages whose parts a shard reads) and `writes` (files in the version folder);
- `after`: the stages whose fingerprints it chains from (none: the source's), at least every stage whose
  output it reads; a stage nothing chains from is a leaf, and the version id chains from the leaves;
- `check`: the backend check, run on its config before any image is read (and in every worker);
- `params`: its fingerprint parameters (default: the config's fields, model files by content hash);
- `enabled`: whether it runs for a config (pseudo_va only with a checkpoint);
- per-image: `part(shard, upstream_stores, config, image_root) -> Part` and `assemble(store, samples, keys,
  usable, out_dir, config) -> (quarantine rows, usable mask or None)`;
- global: `calls(version_dir, config, spec) -> {name: call}` and `summarise(results) -> (summary, seconds)`;
- `report`: a function returning the report sections it adds, `[(anchor, title, section(data))]`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.contract.registry import Registry

# the stages this project ships, in pipeline order (a registered stage not listed here runs after them)
BUILTIN = ("faces", "landmarks", "action_units", "pseudo_va", "graphs", "noise")


def _always(config: object) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One stage of the prepare (see the module docstring)."""

    name: str
    version: str
    config: type | None = None
    section: str | None = None
    per_image: bool = False
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    resolve: Callable[[dict, object], object] | None = None
    check: Callable[[object], None] | None = None
    params: Callable[[object], dict] | None = None
    enabled: Callable[[object], bool] = _always
    part: Callable | None = None
    assemble: Callable | None = None
    calls: Callable | None = None
    summarise: Callable | None = None
    report: Callable[[], list] | None = None

    @property
    def config_section(self) -> str:
        return self.section or self.name


STAGES: Registry[Stage] = Registry("stage")


def register_stage(stage: Stage) -> Stage:
    """Add a stage to the registry (a second stage under one name is an error); returns it."""
    return STAGES.register(stage.name)(stage)


def registered() -> tuple[Stage, ...]:
    """Every registered stage in pipeline order: the built-in ones, then the others as registered."""
    for name in BUILTIN:
        importlib.import_module(f"pipeline.stages.{name}")
    names = STAGES.names()
    order = [name for name in BUILTIN if name in names] + [name for name in names if name not in BUILTIN]
    return tuple(STAGES.get(name) for name in order)


def steps(stages: tuple[Stage, ...]) -> list[tuple[Stage, ...]]:
    """The stages in order, as steps: each per-image stage alone; consecutive global stages together while
    none chains from another of the step (they read nothing of each other, so their calls may run at once)."""
    out: list[tuple[Stage, ...]] = []
    for stage in stages:
        previous = out[-1] if out else ()
        joins = (previous and not stage.per_image and not previous[0].per_image
                 and not set(stage.after) & {s.name for s in previous})
        if joins:
            out[-1] = (*previous, stage)
        else:
            out.append((stage,))
    return out
