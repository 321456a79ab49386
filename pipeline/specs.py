"""Dataset specs: what a dataset is and where it lives (data_manifests/specs/<name>.yaml)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.contract.classes import CANONICAL_CLASSES, class_names
from pipeline.contract.config import load_yaml
from pipeline.contract.errors import ConfigError, choices_message
from pipeline.contract.lock import specs_root
from pipeline.contract.names import plain_name

ALIGNMENTS = ("detect", "given", "prealigned")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its adapter, class mapping, split files and alignment mode."""

    name: str
    adapter: str
    num_classes: int = 7
    alignment: str = "detect"
    root_dirname: str = ""
    splits: dict = field(default_factory=dict)
    class_map: dict = field(default_factory=dict)   # native label (str) -> canonical class name
    excluded: dict = field(default_factory=dict)    # native label (str) -> exclusion reason
    image_dirs: tuple = ()
    image_variant: str = "aligned"
    usage_to_split: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        plain_name("dataset spec name", self.name)   # it names the version, parts and lock folders
        class_names(self.num_classes)  # validates 7 or 8
        if self.alignment not in ALIGNMENTS:
            raise ConfigError(choices_message("alignment", self.alignment, ALIGNMENTS))
        for native, name in self.class_map.items():
            if name not in CANONICAL_CLASSES:
                raise ConfigError(
                    f"spec {self.name!r} maps {native!r} to {name!r}, which is not a canonical class; "
                    f"valid: {', '.join(CANONICAL_CLASSES)}"
                )

    @property
    def classes(self) -> tuple[str, ...]:
        return class_names(self.num_classes)

    def label_of(self, native: str) -> int | None:
        """Canonical index of a native label in this spec's class view; None when outside the view."""
        name = self.class_map.get(str(native))
        if name is None or name not in self.classes:
            return None
        return self.classes.index(name)

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def known_specs(root: Path | None = None) -> list[str]:
    """Names of the dataset specs in `root` (default: data_manifests/specs/)."""
    return sorted(p.stem for p in (root or specs_root()).glob("*.yaml"))


def _dataset_name(name: object, root: Path | None) -> str:
    """A dataset given by name: a plain name (it becomes a path), else one line with the valid choices."""
    try:
        return plain_name("dataset", str(name))
    except ConfigError as exc:
        raise ConfigError(f"{exc}; valid choices: {', '.join(known_specs(root))} (or a spec .yaml path)") from None


def load_spec(name_or_path: str | Path, overrides: dict | None = None, root: Path | None = None) -> DatasetSpec:
    """Load a spec by dataset name (data_manifests/specs/<name>.yaml) or by a YAML path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
    else:
        path = (root or specs_root()) / f"{_dataset_name(name_or_path, root)}.yaml"
    if not path.is_file():
        raise ConfigError(choices_message("dataset", str(name_or_path), known_specs(root)) +
                          f" (or give a spec file path; looked for {path})")
    raw = load_yaml(path, "dataset spec")     # the safe loader: aliases refused, size capped, a mapping
    raw.update(overrides or {})
    for key in ("class_map", "excluded", "splits", "usage_to_split", "options"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ConfigError(f"dataset spec {path}: {key} must be a mapping, got {raw[key]!r}"[:300])
    if not isinstance(raw.get("image_dirs") or [], (list, tuple)):
        raise ConfigError(f"dataset spec {path}: image_dirs must be a list, got {raw['image_dirs']!r}"[:300])
    for key in ("class_map", "excluded"):
        raw[key] = {str(k): v for k, v in (raw.get(key) or {}).items()}
    raw["image_dirs"] = tuple(raw.get("image_dirs") or ())
    for key in ("splits", "usage_to_split", "options"):
        raw[key] = dict(raw.get(key) or {})
    try:
        return DatasetSpec(**raw)
    except TypeError as exc:
        raise ConfigError(f"bad dataset spec {path}: {exc}") from exc


def resolve_root(spec: DatasetSpec, root: str | Path | None) -> Path:
    """The dataset root: --root, else $FER_DATA_ROOT/<root_dirname>. Fails at once when missing."""
    if root is None:
        base = os.environ.get("FER_DATA_ROOT")
        if not base:
            raise ConfigError(
                f"no root for dataset {spec.name!r}: pass --root DIR or set FER_DATA_ROOT to the folder "
                f"that holds {spec.root_dirname or spec.name}/"
            )
        root = Path(base) / (spec.root_dirname or spec.name)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"dataset root for {spec.name!r} does not exist: {root}; pass --root or fix FER_DATA_ROOT")
    return root
