"""Chained fingerprints, version ids and lock files (DVC-lock style).

A version id is the fingerprint of the last stage of a chain, where each stage's fingerprint hashes
its name@semantic-version, its literal parameters, its parents' fingerprints and its seed. The source
stage's parameters include the content digest of every input file, so the id depends on content and
never on where the artefact root or the dataset root lives.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from importlib import metadata as _metadata
from pathlib import Path

from .errors import ArtifactError, ConfigError

ID_LENGTH = 16
PACKAGES_RECORDED = ("numpy", "pyarrow", "torch", "torchvision", "dlib-bin", "faiss-cpu",
                     "pynndescent", "prefect", "scikit-image", "opencv-python-headless")


def canonical_json(value: object) -> str:
    """Deterministic JSON: sorted keys, no spaces, dataclasses and paths as plain values.

    Floats are written with repr precision; NaN/inf are rejected because they make ids unstable.
    """
    def convert(obj: object) -> object:
        if is_dataclass(obj) and not isinstance(obj, type):
            return convert(asdict(obj))
        if isinstance(obj, Mapping):
            return {str(k): convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [convert(v) for v in obj]
        if isinstance(obj, Path):
            return obj.as_posix()
        if isinstance(obj, float) and not math.isfinite(obj):
            raise ConfigError(f"non-finite number {obj!r} in fingerprinted parameters")
        if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
            return convert(obj.item())
        return obj

    return json.dumps(convert(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest_strings(items: Sequence[str]) -> str:
    """One hash over an ordered sequence of strings (e.g. sorted 'relpath:hash' lines)."""
    h = hashlib.blake2b(digest_size=16)
    for item in items:
        h.update(item.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class StageKey:
    """What identifies one stage's output: its code version, literal params, parents and seed."""

    name: str
    version: str
    params: Mapping[str, object] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    seed: int | None = None

    def fingerprint(self) -> str:
        payload = canonical_json({
            "stage": f"{self.name}@{self.version}", "params": dict(self.params),
            "parents": list(self.parents), "seed": self.seed,
        })
        return hashlib.sha256(payload.encode()).hexdigest()[:ID_LENGTH]


def fingerprint(name: str, version: str, params: Mapping[str, object] | None = None,
                parents: Sequence[str] = (), seed: int | None = None) -> str:
    """Fingerprint of one stage (see StageKey)."""
    return StageKey(name, version, dict(params or {}), tuple(parents), seed).fingerprint()


def package_versions(names: Sequence[str] = PACKAGES_RECORDED) -> dict[str, str]:
    """Installed versions of the packages that can change outputs (recorded, not hashed)."""
    found = {}
    for name in names:
        try:
            found[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), **found}


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def manifests_root() -> Path:
    """Where version locks live (`<root>/versions/<dataset>/`): the project's `data_manifests/`, or $FER_MANIFESTS."""
    env = os.environ.get("FER_MANIFESTS")
    return Path(env) if env else PROJECT_ROOT / "data_manifests"


def specs_root() -> Path:
    """Where dataset specs live: the project's `data_manifests/specs/`, or $FER_SPECS."""
    env = os.environ.get("FER_SPECS")
    return Path(env) if env else PROJECT_ROOT / "data_manifests" / "specs"


def artifacts_root() -> Path:
    """`artifacts/` of the project (git-ignored), or $FER_ARTIFACTS."""
    env = os.environ.get("FER_ARTIFACTS")
    return Path(env) if env else PROJECT_ROOT / "artifacts"


def version_dir(dataset: str, version: str, root: Path | None = None) -> Path:
    return (root or artifacts_root()) / dataset / version


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_lock(dataset: str, version: str, lock: Mapping[str, object], root: Path | None = None) -> Path:
    """Write data_manifests/versions/<dataset>/<version>.json and point `latest` at it.

    Call only after every stage succeeded: the lock is the proof that a version is complete.
    """
    versions = (root or manifests_root()) / "versions" / dataset
    record = {"dataset": dataset, "version": version,
              "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "packages": package_versions(), **lock}
    path = versions / f"{version}.json"
    _atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    _atomic_write_text(versions / "latest", version + "\n")
    return path


def read_lock(dataset: str, version: str = "latest", root: Path | None = None) -> dict:
    """The lock of a prepared version ('latest' follows the pointer)."""
    versions = (root or manifests_root()) / "versions" / dataset
    if version == "latest":
        pointer = versions / "latest"
        if not pointer.is_file():
            raise ArtifactError(
                f"no prepared version of {dataset!r} under {versions}; run `make prepare DATASET={dataset}`"
            )
        version = pointer.read_text().strip()
    path = versions / f"{version}.json"
    if not path.is_file():
        known = sorted(p.stem for p in versions.glob("*.json"))
        raise ArtifactError(f"no lock for {dataset} version {version!r}; known versions: {', '.join(known) or 'none'}")
    return json.loads(path.read_text())
