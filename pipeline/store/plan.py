"""The version plan: every stage's chained fingerprint and the version id, known before any per-image work.

The plan chains every stage's fingerprint (name@version, literal parameters, parents, seed) from the
sources stage's content fingerprint. Per-image stores chain only the per-image stages' parameters, so
results keyed by image content are shared by every version that uses the same parameters.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.contract.errors import ConfigError
from pipeline.contract.lock import artifacts_root
from pipeline.contract.tables import MANIFEST
from pipeline.store.fingerprint import fingerprint

if TYPE_CHECKING:
    from pipeline.config import PrepareConfig, StageConfigs

PLAN_VERSION = "1.0"
PER_IMAGE_STAGES = ("faces", "landmarks", "action_units")
SPACE_INPUTS = {"au": "action_units.parquet", "au17": "action_units.parquet", "landmarks": "landmarks.parquet",
                "landmarks_procrustes": "landmarks.parquet", "va": "samples.parquet"}


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


def plan_version(config: PrepareConfig, stages: StageConfigs, source_fingerprint: str,
                 stage_versions: dict[str, str], root: Path | None = None) -> VersionPlan:
    """Chain fingerprints: sources -> faces -> landmarks -> action_units [-> pseudo_va] -> graphs -> noise -> version.

    pseudo_va (when its checkpoint is set) chains from faces (it reads the crops) and the checkpoint's content hash.
    """
    store_fps: dict[str, str] = {}
    parent: tuple[str, ...] = ()
    for name, stage_config in zip(PER_IMAGE_STAGES, (stages.align, stages.landmarks, stages.action_units)):
        store_fps[name] = fingerprint(name, stage_versions[name], _params(stage_config), parent)
        parent = (store_fps[name],)
    chain = {"sources": source_fingerprint}
    previous = source_fingerprint
    for name in PER_IMAGE_STAGES:
        chain[name] = fingerprint(name, stage_versions[name], {"store": store_fps[name]}, (previous,))
        previous = chain[name]
    pseudo = getattr(stages, "pseudo_va", None)
    if pseudo is not None and pseudo.enabled:   # only then: versions without pseudo-VA keep their ids
        from pipeline.stages.pseudo_va import fingerprint_params

        chain["pseudo_va"] = fingerprint("pseudo_va", stage_versions["pseudo_va"], fingerprint_params(pseudo),
                                         (chain["faces"],))
        previous = chain["pseudo_va"]
    chain["graphs"] = fingerprint("graphs", stage_versions["graphs"],
                                  {**_params(stages.graphs), "spaces": list(stages.spaces)}, (previous,))
    chain["noise"] = fingerprint("noise", stage_versions["noise"], {"variants": list(stages.noise)},
                                 (chain["sources"],))
    version = fingerprint("version", PLAN_VERSION, {"report": config.report},
                          (chain["graphs"], chain["noise"]), seed=config.seed)
    return VersionPlan(stages.spec.name, source_fingerprint, chain, store_fps, version, root or artifacts_root())


def version_is_complete(plan: VersionPlan) -> bool:
    """A version is complete when its manifest says so (written last, after every stage)."""
    manifest = plan.version_dir / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("version") == plan.version
    except json.JSONDecodeError:
        return False


def stage_versions() -> dict[str, str]:
    """name@version of every stage module: part of every fingerprint."""
    from pipeline.sources import STAGE_VERSION as sources_version
    from pipeline.stages import action_units, faces, graphs, landmarks, noise, pseudo_va

    return {"sources": sources_version, "faces": faces.STAGE_VERSION, "landmarks": landmarks.STAGE_VERSION,
            "action_units": action_units.STAGE_VERSION, "graphs": graphs.STAGE_VERSION, "noise": noise.STAGE_VERSION,
            "pseudo_va": pseudo_va.STAGE_VERSION}


def spaces_present(version_dir: Path, spaces: tuple[str, ...]) -> list[str]:
    """The configured graph spaces whose input table exists (va needs valence/arousal in samples)."""
    import pyarrow.parquet as pq

    present = []
    for space in spaces:
        path = Path(version_dir) / SPACE_INPUTS.get(space, f"features/{space}.parquet")
        if not path.is_file():
            continue
        if space == "va" and "valence" not in pq.read_schema(path).names:
            continue
        present.append(space)
    return present
