"""The version lock, in one module: its format (LOCK_FIELDS, checked on every read), writing, reading, and
the declared roots its paths are relative to.

The lock is the record of one prepared version: its stages, parameters, source files and outputs (each
with its content hash and size; pipeline.store.record composes it, its paths relative to the declared
roots, and pipeline.verify re-hashes against it).
`write_version` writes it atomically, last, only after every stage succeeded: `manifest.json` in the
version folder, then data_manifests/versions/<dataset>/<version>.json, and `latest` points at the newest
lock. It holds no absolute path: every path is recorded relative to one of the declared roots
(`{"root": "cache", "path": "sources/synthetic"}`, pipeline.store.record), so a lock means the same on
every machine and can be committed. A lock that lacks a field or has one of the wrong type fails on
reading, naming the field.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata as _metadata
from pathlib import Path

from pipeline.contract.atomic import write_json, write_text
from pipeline.contract.errors import ArtifactError

log = logging.getLogger(__name__)
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


def version_dir(dataset: str, version: str, root: Path | None = None) -> Path:
    return (root or artifacts_root()) / dataset / version


# --- the lock's format: what a reader may rely on --------------------------------------------------------

LOCK_FORMAT = "2"          # 2: outputs carry {hash, size}; sources listed; paths relative to declared roots
LOCK_FIELDS: dict[str, type | tuple[type, ...]] = {
    "lock_format": str, "dataset": str, "version": str, "num_classes": int, "classes": list,
    "stages": dict, "stores": dict, "stage_versions": dict, "config": dict, "stage_configs": dict,
    "crops": dict, "sources": dict, "summary": dict, "outputs": dict,
}
OUTPUT_FIELDS: dict[str, type] = {"hash": str, "size": int}


def _type_names(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))


def check_lock(record: object, where: str) -> dict:
    """`record` if it is a lock of LOCK_FORMAT with every field of LOCK_FIELDS and well-formed outputs;
    else ArtifactError naming the file and the first bad field."""
    if not isinstance(record, dict):
        raise ArtifactError(f"{where}: a lock is a JSON object, got {type(record).__name__}")
    if record.get("lock_format") != LOCK_FORMAT:
        raise ArtifactError(f"{where}: field 'lock_format' is {record.get('lock_format')!r}, this version reads "
                            f"{LOCK_FORMAT!r}; prepare the version again to rewrite its lock")
    for name, kind in LOCK_FIELDS.items():
        if name not in record:
            raise ArtifactError(f"{where}: field {name!r} is missing (a {_type_names(kind)})")
        if not isinstance(record[name], kind) or isinstance(record[name], bool):
            raise ArtifactError(f"{where}: field {name!r} must be a {_type_names(kind)}, "
                                f"got {type(record[name]).__name__} {record[name]!r:.80}")
    for output, entry in record["outputs"].items():
        for name, kind in OUTPUT_FIELDS.items():
            if not isinstance(entry, dict) or not isinstance(entry.get(name), kind):
                raise ArtifactError(f"{where}: field 'outputs.{output}.{name}' must be a {kind.__name__}, "
                                    f"got {entry.get(name) if isinstance(entry, dict) else entry!r:.80}")
    return record


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})") from None


def verify_hint(dataset: str, version: str) -> str:
    return (f"`make verify DATASET={dataset} VERSION={version}` lists every difference from its lock; "
            f"prepare it again to repair it")


# --- write, read -------------------------------------------------------------------------------------------

def lock_file(dataset: str, version: str, root: Path | None = None) -> Path:
    """data_manifests/versions/<dataset>/<version>.json (under `root` or manifests_root())."""
    return (root or manifests_root()) / "versions" / dataset / f"{version}.json"


def _lock_record(dataset: str, version: str, lock: Mapping[str, object]) -> dict:
    """The lock file's record: the version's record plus when it was written and the package versions."""
    return {"dataset": dataset, "version": version,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "packages": package_versions(), **lock}


def write_lock(dataset: str, version: str, lock: Mapping[str, object], root: Path | None = None) -> Path:
    """Write data_manifests/versions/<dataset>/<version>.json and point `latest` at it.

    Call only after every stage succeeded: the lock is the proof that a version is complete.
    """
    path, record = lock_file(dataset, version, root), _lock_record(dataset, version, lock)
    write_json(path, record)
    write_text(path.parent / "latest", version + "\n")
    return path


def write_version(version_dir: Path, record: Mapping[str, object], root: Path | None = None) -> Path:
    """A finished version's record: `manifest.json` in its folder first, then the lock and `latest`.

    The manifest marks the version complete (`is_complete`); `restore_lock` rewrites a lock that a run
    killed between the two did not write.
    """
    from pipeline.contract.tables import MANIFEST

    dataset, version = str(record.get("dataset")), str(record.get("version"))
    check_lock(dict(record), f"the record of version {version!r}")
    path, lock = lock_file(dataset, version, root), _lock_record(dataset, version, record)
    write_json(Path(version_dir) / MANIFEST, record)
    write_json(path, lock)
    write_text(path.parent / "latest", version + "\n")
    return path


def point_latest(dataset: str, version: str, root: Path | None = None) -> bool:
    """Rewrite versions/<dataset>/latest when it does not name `version` (a run killed between the lock and
    the pointer left it on the old one); True when it was rewritten."""
    pointer = lock_file(dataset, version, root).parent / "latest"
    try:
        if pointer.read_text(encoding="utf-8").strip() == version:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text(pointer, version + "\n")
    log.info("latest of %s now names %s", dataset, version)
    return True


def is_complete(version_dir: Path, version: str) -> bool:
    """A version is complete when its manifest says so (written after every stage, before the lock)."""
    from pipeline.contract.tables import MANIFEST

    manifest = Path(version_dir) / MANIFEST
    try:
        return manifest.is_file() and json.loads(manifest.read_text()).get("version") == version
    except json.JSONDecodeError:
        return False


def restore_lock(version_dir: Path, root: Path | None = None) -> None:
    """A complete version whose lock is missing (a run killed between manifest and lock) gets it back."""
    from pipeline.contract.tables import MANIFEST

    manifest = Path(version_dir) / MANIFEST
    record = check_lock(_load_json(manifest), str(manifest))
    if not lock_file(record["dataset"], record["version"], root).is_file():
        write_lock(record["dataset"], record["version"], record, root)


def read_lock(dataset: str, version: str = "latest", root: Path | None = None) -> dict:
    """The lock of a prepared version ('latest' follows the pointer), schema-checked (check_lock)."""
    versions = (root or manifests_root()) / "versions" / dataset
    if version == "latest":
        pointer = versions / "latest"
        if not pointer.is_file():
            raise ArtifactError(
                f"no prepared version of {dataset!r} under {versions}; run `make prepare DATASET={dataset}`"
            )
        version = pointer.read_text().strip()
    path = lock_file(dataset, version, root)
    if not path.is_file():
        known = sorted(p.stem for p in versions.glob("*.json"))
        raise ArtifactError(f"no lock for {dataset} version {version!r}; known versions: {', '.join(known) or 'none'}")
    try:
        record = check_lock(_load_json(path), str(path))
        if record["version"] != version:
            raise ArtifactError(f"{path}: field 'version' is {record['version']!r}, not the file's {version!r} (the "
                                f"lock was edited or copied)")
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}; {verify_hint(dataset, version)}") from None
    return record
