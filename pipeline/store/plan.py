"""The version plan: every stage's chained fingerprint and the version id, known before any per-image work.

The plan chains every enabled stage's fingerprint (name@version, literal parameters, parents, seed) from the
sources stage's content fingerprint, looping over the resolved stages (pipeline.stages.base: the store
imports no stage). Per-image stores chain only the per-image stages' parameters, so results keyed by
image content are shared by every version that uses the same parameters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.contract.errors import ConfigError
from pipeline.contract.lock import artifacts_root
from pipeline.store.fingerprint import fingerprint

if TYPE_CHECKING:
    from pipeline.config import PrepareConfig, StageConfigs

PLAN_VERSION = "1.0"


@dataclass(frozen=True)
class VersionPlan:
    """Fingerprints of every stage, the per-image stores and the version id, known up front."""

    dataset: str
    source_fingerprint: str
    stage_fingerprints: dict          # stage name -> fingerprint (chained)
    store_fingerprints: dict          # per-image stage -> fingerprint of its parameter chain only
    version: str
    artifacts: Path

    @property
    def version_dir(self) -> Path:
        return self.artifacts / self.dataset / self.version

    def store_dir(self, stage: str) -> Path:
        return self.artifacts / self.dataset / "_parts" / f"{stage}-{self.store_fingerprints[stage]}"


# Stage-config fields that name a model file: the fingerprint holds the file's content hash, never its
# path, so a checkpoint moved or copied to another machine keeps the version id, and one replaced in
# place (same path, other weights) gets a new one.
MODEL_FILE_FIELDS = ("hrnet_checkpoint", "fan_checkpoint", "fan_detector_checkpoint", "openface_bin")


def _params(obj) -> dict:
    params = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    named = {key: params[key] for key in MODEL_FILE_FIELDS if params.get(key)}
    if named:
        params.update(model_file_hashes(type(obj).__name__, named))
    return params


def model_file_hashes(owner: str, files: dict[str, str]) -> dict[str, dict[str, str]]:
    """{field: {"content": blake2 hash}} for each named model file (stat-cached like source files)."""
    from pipeline.store.hashing import default_hash_cache

    missing = {key: path for key, path in files.items() if not Path(path).is_file()}
    if missing:
        key, path = next(iter(missing.items()))
        raise ConfigError(f"{owner}.{key} {path!r} is not a file: give the path of an existing model file")
    cache = default_hash_cache()
    try:
        return {key: {"content": cache.hash(path)} for key, path in files.items()}
    finally:
        cache.close()


def _stage_fingerprints(stages: StageConfigs, source_fingerprint: str) -> tuple[dict, dict, list[str]]:
    """(chain, per-image store fingerprints, leaves) over the enabled stages, in pipeline order.

    A stage chains from the fingerprints of its enabled `after` stages (none: the source's); a per-image
    stage's store chains its parameters with its `after` stores only. Leaves: the stages nothing chains from.
    """
    enabled = stages.enabled
    names = {stage.name for stage in enabled}
    chain, stores = {"sources": source_fingerprint}, {}
    for stage in enabled:
        config = stages.configs[stage.name]
        after = [name for name in stage.after if name in names]
        params = stage.params(config) if stage.params else _params(config)
        if stage.per_image:
            store_parents = [stores[name] for name in after if name in stores]
            stores[stage.name] = fingerprint(stage.name, stage.version, params, store_parents)
            params = {"store": stores[stage.name]}
        parents = [chain[name] for name in after] or [chain["sources"]]
        chain[stage.name] = fingerprint(stage.name, stage.version, params, parents)
    parents = {name for stage in enabled for name in stage.after}
    return chain, stores, [stage.name for stage in enabled if stage.name not in parents]


def plan_version(config: PrepareConfig, stages: StageConfigs, source_fingerprint: str,
                 root: Path | None = None) -> VersionPlan:
    """Chain every enabled stage's fingerprint from the source's; the version id chains from the leaves."""
    chain, stores, leaves = _stage_fingerprints(stages, source_fingerprint)
    version = fingerprint("version", PLAN_VERSION, {"report": config.report}, [chain[name] for name in leaves],
                          seed=config.seed)
    return VersionPlan(stages.spec.name, source_fingerprint, chain, stores, version, root or artifacts_root())
