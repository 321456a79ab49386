"""Version locks (data_manifests/versions/<dataset>/<version>.json) and the declared roots.

The lock is the record of one prepared version: its stages, parameters, source files and outputs (each
with its content hash and size). It is written atomically, last, only after every stage succeeded, and
`latest` points at the newest lock. It holds no absolute path: every path is recorded relative to one of
the declared roots (`{"root": "cache", "path": "sources/synthetic"}`), so a lock means the same on every
machine and can be committed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata as _metadata
from pathlib import Path

from pipeline.contract.errors import ArtifactError

PACKAGES_RECORDED = ("numpy", "pyarrow", "torch", "torchvision", "dlib-bin", "faiss-cpu",
                     "pynndescent", "prefect", "scikit-image", "opencv-python-headless")


def package_versions(names: Sequence[str] = PACKAGES_RECORDED) -> dict[str, str]:
    """Installed versions of the packages that can change outputs (recorded, not hashed)."""
    found = {}
    for name in names:
        try:
            found[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), **found}


PROJECT_ROOT = Path(__file__).resolve().parents[2]


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


def cache_root() -> Path:
    """The per-user cache (hash cache, materialised source images): $FER_CACHE, default ~/.cache/fer-noise."""
    env = os.environ.get("FER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fer-noise"


def declared_roots(dataset_root: str | Path | None = None) -> dict[str, Path]:
    """The roots lock paths are relative to: artifacts, cache, data ($FER_DATA_ROOT, when set) and the
    dataset root of a run (when given)."""
    roots = {"artifacts": artifacts_root(), "cache": cache_root(), "manifests": manifests_root()}
    if os.environ.get("FER_DATA_ROOT"):
        roots["data"] = Path(os.environ["FER_DATA_ROOT"])
    if dataset_root is not None:
        roots["dataset"] = Path(dataset_root)
    return {name: Path(os.path.abspath(path.expanduser())) for name, path in roots.items()}


def relative_record(path: str | Path, roots: Mapping[str, Path], exclude: Sequence[str] = ()) -> dict:
    """`{"root": name, "path": relative posix path}` under the deepest declared root holding `path`.

    A path outside every root keeps only its file name, with `"root": null`: never an absolute path.
    """
    absolute = Path(os.path.abspath(Path(path).expanduser()))
    best: tuple[int, str, Path] | None = None
    for name, root in roots.items():
        if name in exclude:
            continue
        try:
            relative = absolute.relative_to(root)
        except ValueError:
            continue
        if best is None or len(root.parts) > best[0]:
            best = (len(root.parts), name, relative)
    if best is None:
        return {"root": None, "path": absolute.name}
    return {"root": best[1], "path": best[2].as_posix() or "."}


def resolve_record(record: Mapping[str, object], roots: Mapping[str, Path]) -> Path | None:
    """The path a relative record names under `roots`; None when its root is not declared here."""
    root = record.get("root")
    if root not in roots:
        return None
    return roots[root] / str(record.get("path") or ".")


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
