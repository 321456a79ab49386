"""The prepare pipeline without an orchestrator: configuration, version plan, shards and assembly.

`flows/prepare.py` runs these functions as Prefect tasks; a notebook can call them directly. The plan
chains every stage's fingerprint (name@version, literal parameters, parents, seed) from the sources
stage's content fingerprint, so the version id is known before any per-image work starts.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.contract.errors import ConfigError
from pipeline.contract.lock import artifacts_root
from pipeline.specs import DatasetSpec, load_spec
from pipeline.store.fingerprint import fingerprint

PLAN_VERSION = "1.0"
DEFAULT_DETECTOR = {"detect": "dlib", "given": "given", "prealigned": "prealigned"}
DEFAULT_SPACES = ("au", "landmarks", "va")


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `make prepare` takes; nested sections are the stage configs' fields.

    Precedence: these defaults < a YAML file (`--config`) < command-line `--set section.key=value`.
    """

    dataset: str = "synthetic"
    root: str | None = None
    num_classes: int | None = None          # None: the spec's
    source: dict = field(default_factory=dict)        # adapter options (synthetic: n, seed, size, ...)
    shard_size: int = 250                   # images per task (100-500: one task per image is too costly)
    max_workers: int = 2                    # bounded concurrency of shard tasks
    align: dict = field(default_factory=dict)         # pipeline.stages.faces.AlignConfig fields
    landmarks: dict = field(default_factory=dict)     # pipeline.stages.landmarks.LandmarkConfig fields
    action_units: dict = field(default_factory=dict)  # pipeline.stages.action_units.AUConfig fields
    graphs: dict = field(default_factory=dict)        # pipeline.stages.graphs.GraphConfig fields + spaces
    noise: dict = field(default_factory=dict)         # pipeline.noise config fields (variants, ...)
    report: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.shard_size <= 5000:
            raise ConfigError(f"shard_size must be within 1..5000, got {self.shard_size}")
        if self.max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, got {self.max_workers}")


def _parse_override(item: str) -> tuple[list[str], object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. landmarks.backend=dlib)")
    return key.split("."), yaml.safe_load(value)


def load_prepare_config(path: str | Path | None = None, overrides: list[str] = (), **fields) -> PrepareConfig:
    """Defaults < YAML file < `section.key=value` overrides < explicit keyword fields."""
    raw: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"prepare config file not found: {path}")
        raw = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        keys, value = _parse_override(item)
        target = raw
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    raw.update({k: v for k, v in fields.items() if v is not None})
    valid = {f.name for f in dataclasses.fields(PrepareConfig)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise ConfigError(f"unknown prepare config key(s) {unknown}; valid: {', '.join(sorted(valid))}")
    return PrepareConfig(**raw)


def _build(cls: type, fields: dict, section: str):
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ConfigError(f"unknown {section} option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return cls(**converted)


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


def _graph_config(fields: dict):
    """graphs section: KnnConfig fields (k, backend, metric, ...) and GraphConfig fields, plus `spaces`."""
    from pipeline.knn import KnnConfig
    from pipeline.stages.graphs import GraphConfig

    spaces = tuple(fields.pop("spaces", DEFAULT_SPACES))
    knn_names = {f.name for f in dataclasses.fields(KnnConfig)}
    knn = _build(KnnConfig, {k: v for k, v in fields.items() if k in knn_names}, "graphs (knn)")
    rest = {k: v for k, v in fields.items() if k not in knn_names}
    if "sigma" in rest:
        from pipeline.stages.graphs import DEFAULT_SIGMA

        rest["sigma"] = {**DEFAULT_SIGMA, **rest["sigma"]}
    return _build(GraphConfig, {**rest, "knn": knn}, "graphs"), spaces


def _noise_variants(fields: dict) -> tuple[str, ...]:
    """noise section: an explicit `variants` list, or NoiseConfig fields (kinds x rates x seeds)."""
    from pipeline.stages.noise import NoiseConfig, parse_variant, variant_names

    if "variants" in fields:
        names = list(fields.pop("variants"))
        if fields:
            raise ConfigError(f"noise: give either variants or {sorted(fields)}, not both")
        if "clean" not in names:
            names.insert(0, "clean")
    else:
        names = variant_names(_build(NoiseConfig, fields, "noise"))
    return tuple(parse_variant(n).name for n in names)


def resolve_stage_configs(config: PrepareConfig) -> StageConfigs:
    """Build and validate every stage's config at once, so a bad option fails before any work."""
    from pipeline.stages.action_units import AUConfig
    from pipeline.stages.faces import AlignConfig
    from pipeline.stages.landmarks import LandmarkConfig

    overrides = {"num_classes": config.num_classes} if config.num_classes else None
    spec = load_spec(config.dataset, overrides=overrides)
    align = _build(AlignConfig, {"detector": DEFAULT_DETECTOR[spec.alignment], **config.align}, "align")
    landmarks = _build(LandmarkConfig, config.landmarks, "landmarks")
    action_units = _build(AUConfig, config.action_units, "action_units")
    graphs, spaces = _graph_config(dict(config.graphs))
    noise = _noise_variants(dict(config.noise))
    return StageConfigs(spec, align, landmarks, action_units, graphs, spaces, noise)


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


def _params(obj) -> dict:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def plan_version(config: PrepareConfig, stages: StageConfigs, source_fingerprint: str,
                 stage_versions: dict[str, str], root: Path | None = None) -> VersionPlan:
    """Chain fingerprints: sources -> faces -> landmarks -> action_units -> graphs -> noise -> version.

    Store fingerprints chain only the per-image stages' parameters (not the dataset), so results keyed
    by image content are shared by every version that uses the same parameters.
    """
    store_fps: dict[str, str] = {}
    parent: tuple[str, ...] = ()
    for name, stage_config in (("faces", stages.align), ("landmarks", stages.landmarks),
                               ("action_units", stages.action_units)):
        store_fps[name] = fingerprint(name, stage_versions[name], _params(stage_config), parent)
        parent = (store_fps[name],)
    chain = {"sources": source_fingerprint}
    previous = source_fingerprint
    for name in ("faces", "landmarks", "action_units"):
        chain[name] = fingerprint(name, stage_versions[name], {"store": store_fps[name]}, (previous,))
        previous = chain[name]
    chain["graphs"] = fingerprint("graphs", stage_versions["graphs"],
                                  {**_params(stages.graphs), "spaces": list(stages.spaces)}, (previous,))
    chain["noise"] = fingerprint("noise", stage_versions["noise"], {"variants": list(stages.noise)},
                                 (chain["sources"],))
    version = fingerprint("version", PLAN_VERSION, {"report": config.report},
                          (chain["graphs"], chain["noise"]), seed=config.seed)
    return VersionPlan(stages.spec.name, source_fingerprint, chain, store_fps, version, root or artifacts_root())


def version_is_complete(plan: VersionPlan) -> bool:
    """A version is complete when its manifest says so (written last, after every stage)."""
    manifest = plan.version_dir / "manifest.json"
    if not manifest.is_file():
        return False
    return json.loads(manifest.read_text()).get("version") == plan.version


def stage_versions() -> dict[str, str]:
    """name@version of every stage module: part of every fingerprint."""
    from pipeline.sources import STAGE_VERSION as sources_version
    from pipeline.stages import action_units, graphs, landmarks, noise
    from pipeline.stages import faces as detect

    return {"sources": sources_version, "faces": detect.STAGE_VERSION, "landmarks": landmarks.STAGE_VERSION,
            "action_units": action_units.STAGE_VERSION, "graphs": graphs.STAGE_VERSION, "noise": noise.STAGE_VERSION}


SPACE_INPUTS = {"au": "action_units.parquet", "au17": "action_units.parquet", "landmarks": "landmarks.parquet",
                "landmarks_procrustes": "landmarks.parquet", "va": "samples.parquet"}


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
