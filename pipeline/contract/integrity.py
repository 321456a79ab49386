"""Open a prepared version through the contract: its lock, then every file a reader uses, checked first.

    files = open_version("synthetic", "latest")            # lock + names + manifest + every output's size
    samples = files.read(SAMPLES, read_table, check_samples_table(files))   # parse, range-check, hash-check

What is checked, and when:
- names: the dataset, the version id and the text `latest` holds are plain names (contract.names);
- the lock: valid JSON, naming this dataset and version, equal to the version folder's `manifest.json`
  (but for `written` / `packages`), its class list consistent with `num_classes`;
- on open, every output the lock lists is present with its recorded size (a stat each: cheap);
- on read, the file is parsed, its schema and ranges are checked (`check_*` below: dense sample ids,
  labels inside the class set, neighbour indices in [0, N), finite vectors, crop store size and valid mask
  against the sample count), then its content hash is compared with the lock's. Hashes are cached by
  (path, size, mtime) in the same stat cache the prepare uses, so each file is hashed once.

Every refusal is one ArtifactError line naming the file and the fault and pointing at `make verify`,
which lists every difference between a version and its lock.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa

from pipeline.contract import crops as store
from pipeline.contract.errors import ArtifactError, ConfigError
from pipeline.contract.hashing import HashCache
from pipeline.contract.lock import artifacts_root, cache_root, manifests_root, read_lock, verify_hint
from pipeline.contract.names import PLAIN_NAME, plain_name
from pipeline.contract.tables import CROPS_DIR, MANIFEST

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_ONLY_KEYS = ("written", "packages")      # in the lock, not in the version's manifest.json copy
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, pa.ArrowException)
_CACHE: dict[str, HashCache] = {}
_CACHE_LOCK = threading.Lock()


def _hash_cache() -> HashCache:
    """The process's stat cache at $FER_CACHE/hashes.sqlite; in memory (said once) when that is not writable."""
    path = cache_root() / "hashes.sqlite"
    with _CACHE_LOCK:
        if str(path) not in _CACHE:
            try:
                _CACHE[str(path)] = HashCache(path)
            except (OSError, sqlite3.Error) as exc:
                log.warning("hash cache %s cannot be opened (%s): output hashes are kept in memory for this "
                            "process only, so each run re-hashes what it reads", path, exc)
                _CACHE[str(path)] = HashCache(None)
        return _CACHE[str(path)]


def resolve_version(dataset: str, version: str, manifests: Path | None = None) -> str:
    """The version id `version` names ('latest' follows the pointer file), each checked as a plain name since
    each becomes a path. A `latest` holding anything but a version id (garbage, `../x`, several lines) is a
    damaged artefact: one ArtifactError naming the pointer."""
    plain_name("dataset", dataset)
    if version != "latest":
        return plain_name("version", version)
    pointer = (manifests or manifests_root()) / "versions" / dataset / "latest"
    if not pointer.is_file():
        return version           # read_lock says there is no prepared version and how to make one
    try:
        return plain_name("version id", pointer.read_bytes()[:1000].decode("utf-8").strip())
    except (UnicodeDecodeError, ConfigError) as exc:
        known = sorted(p.stem for p in pointer.parent.glob("*.json"))
        raise ArtifactError(f"the latest pointer {pointer} does not hold a version id ({exc}); known versions: "
                            f"{', '.join(known) or 'none'}; run `make prepare DATASET={dataset}` to rewrite it, "
                            f"or give --version") from None


def read_version_lock(dataset: str, version: str = "latest", manifests: Path | None = None) -> dict:
    """The lock of a version, read through the lock module, refused in one line when it is not a lock."""
    manifests = Path(manifests) if manifests else manifests_root()
    version_id = resolve_version(dataset, version, manifests)
    path = manifests / "versions" / dataset / f"{version_id}.json"
    try:
        lock = read_lock(dataset, version_id, root=manifests)
    except (ValueError, UnicodeDecodeError) as exc:     # json.JSONDecodeError is a ValueError
        raise ArtifactError(f"the lock {path} is not valid JSON ({exc}); {verify_hint(dataset, version_id)}") from exc
    if not isinstance(lock, dict) or lock.get("version") != version_id or lock.get("dataset", dataset) != dataset:
        what = f"names {lock.get('dataset')!r} version {lock.get('version')!r}" if isinstance(lock, dict) else \
            f"is a JSON {type(lock).__name__}, not an object"
        raise ArtifactError(f"the lock {path} {what}, not {dataset} version {version_id}; "
                            f"{verify_hint(dataset, version_id)}")
    if not isinstance(lock.get("outputs", {}), dict):
        raise ArtifactError(f"the lock {path}: 'outputs' is not a mapping; {verify_hint(dataset, version_id)}")
    return lock


def _entry(value) -> tuple[int | None, str | None]:
    """(size, hash) of a lock output entry ({"hash", "size"}, or a bare size in lock format 1)."""
    if isinstance(value, dict):
        size = value.get("size")
        return (size if isinstance(size, int) else None), value.get("hash")
    return (value if isinstance(value, int) else None), None


@dataclass
class VersionFiles:
    """A version folder whose lock was read and whose outputs were found at their recorded sizes."""

    dataset: str
    version: str
    directory: Path
    lock: dict
    num_classes: int
    verified: set = field(default_factory=set)       # names hash-checked by this process

    def fault(self, name: str | Path, text: str) -> ArtifactError:
        """One line: the version, the file (`name` under the version folder, or a path), the fault, the hint."""
        path = name if isinstance(name, Path) else self.directory / name
        return ArtifactError(f"{self.dataset} version {self.version} is damaged: {path}: {text}; "
                             f"{verify_hint(self.dataset, self.version)}")

    @property
    def outputs(self) -> dict:
        return self.lock.get("outputs") or {}

    def has(self, name: str) -> bool:
        return name in self.outputs

    def present(self, name: str) -> Path:
        """The path of an output the lock lists, present at its recorded size."""
        if name not in self.outputs:
            recorded = "" if self.outputs else " (this lock lists no outputs)"
            raise self.fault(name, f"not recorded in the version's lock{recorded}")
        path = self.directory / name
        size, _ = _entry(self.outputs[name])
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise self.fault(name, "missing") from None
        if size is not None and actual != size:
            raise self.fault(name, f"{actual} bytes, the lock records {size}")
        return path

    def confirm(self, name: str) -> None:
        """Compare the content hash of `name` with the lock's (hashed once per (path, size, mtime))."""
        _, expected = _entry(self.outputs.get(name))
        if expected is None or name in self.verified:
            return
        found = _hash_cache().hash(self.directory / name)
        _hash_cache().commit()
        if found != expected:
            raise self.fault(name, f"content hash {found} differs from the lock's {expected} (edited or damaged "
                                   f"after the prepare)")
        self.verified.add(name)

    def read(self, name: str, load: Callable[[Path], T], check: Callable[[T], str | None] | None = None) -> T:
        """load(path) of a listed output, its ranges checked (`check` returns a fault or None), then its hash."""
        path = self.present(name)
        try:
            value = load(path)
        except ArtifactError as exc:
            raise self.fault(name, str(exc)) from exc
        except READ_ERRORS as exc:
            raise self.fault(name, f"cannot be read ({type(exc).__name__}: {exc})") from exc
        problem = check(value) if check is not None else None
        if problem:
            raise self.fault(name, problem)
        self.confirm(name)
        return value


def _check_outputs(files: VersionFiles) -> None:
    """Every output the lock lists: a plain relative path, present at its recorded size."""
    for name in files.outputs:
        parts = str(name).split("/")
        if not all(PLAIN_NAME.fullmatch(p) and ".." not in p for p in parts):
            raise files.fault(".", f"the lock lists an output {name!r} that is not a plain relative path")
        files.present(name)


def _check_manifest(files: VersionFiles) -> None:
    """The version folder's manifest.json is the lock's copy: an edit of either shows here."""
    recorded = files.directory / MANIFEST
    if not recorded.is_file():
        raise files.fault(MANIFEST, "missing")
    try:
        copy = json.loads(recorded.read_text())
    except (ValueError, OSError) as exc:
        raise files.fault(MANIFEST, f"cannot be read ({exc})") from exc
    if not isinstance(copy, dict):
        raise files.fault(MANIFEST, "not a JSON object")
    lock = {k: v for k, v in files.lock.items() if k not in LOCK_ONLY_KEYS}
    copy = {k: v for k, v in copy.items() if k not in LOCK_ONLY_KEYS}
    differ = sorted(k for k in set(lock) | set(copy) if lock.get(k) != copy.get(k))
    if differ:
        raise files.fault(MANIFEST, f"differs from the lock in {', '.join(differ[:5])} (the lock or this copy "
                                    f"was edited)")


def lock_classes(lock: dict) -> int | None:
    """`num_classes` of a lock (7 or 8), checked against its class list; None when the lock has neither."""
    count, names = lock.get("num_classes"), lock.get("classes")
    if count is None and names is None:
        return None
    if count is not None and count not in (7, 8):
        raise ArtifactError(f"num_classes {count!r} (the class sets are 7 or 8 classes)")
    if names is not None and (not isinstance(names, list) or (count is not None and len(names) != count)):
        raise ArtifactError(f"num_classes {count!r} does not match its class list {names!r}")
    return int(count) if count is not None else len(names)


def open_version(dataset: str, version: str = "latest", artifacts: str | Path | None = None,
                 manifests: str | Path | None = None) -> VersionFiles:
    """Read and check the lock of a version and find its folder; reads nothing else but file sizes."""
    manifests = Path(manifests) if manifests else manifests_root()
    lock = read_version_lock(dataset, version, manifests)
    version_id = lock["version"]
    directory = (Path(artifacts) if artifacts else artifacts_root()) / dataset / version_id
    files = VersionFiles(dataset, version_id, directory, lock, 0)
    if not directory.is_dir():
        raise ArtifactError(f"version {version_id} of {dataset!r} has a lock but no artefacts at {directory}; "
                            f"run `make prepare DATASET={dataset}` again (or set FER_ARTIFACTS)")
    try:
        files.num_classes = lock_classes(lock) or 0
    except ArtifactError as exc:
        raise files.fault(manifests / "versions" / dataset / f"{version_id}.json", str(exc)) from exc
    _check_manifest(files)
    _check_outputs(files)
    return files


# --- schema and range checks of the tables a reader uses: each returns a fault, or None ---

def _ids_fault(ids: np.ndarray, n: int, dense: bool = False) -> str | None:
    """sample_id column: integers, unique, in [0, n) (and all of 0..n-1 when `dense`)."""
    if ids.dtype.kind not in "iu":
        return f"sample_id has type {ids.dtype}, not integers"
    bad = (ids < 0) | (ids >= n)
    if bad.any():
        return f"{int(bad.sum())} sample ids outside [0, {n}) (e.g. {int(ids[bad][0])})"
    if len(np.unique(ids)) != len(ids):
        return "repeated sample ids"
    if dense and len(ids) != n:
        return f"sample ids are not dense 0..{n - 1}"
    return None


def _column_fault(table: pa.Table, required: list[str]) -> str | None:
    missing = [c for c in required if c not in table.column_names]
    return f"lacks columns {missing} (has {table.column_names})" if missing else None


def _labels_fault(values: pa.ChunkedArray, num_classes: int, what: str) -> str | None:
    if values.null_count:
        return f"{values.null_count} null {what}s"
    label = values.to_numpy(zero_copy_only=False)
    if label.dtype.kind not in "iu":
        return f"{what} has type {label.dtype}, not integers"
    bad = (label < 0) | (label >= num_classes)
    if bad.any():
        return (f"{int(bad.sum())} {what}s outside the {num_classes} classes [0, {num_classes}) "
                f"(e.g. {int(label[bad][0])})")
    return None


def check_samples(num_classes: int) -> Callable[[pa.Table], str | None]:
    """samples.parquet: sample_id dense 0..N-1, split present, label inside the class set."""
    def check(table: pa.Table) -> str | None:
        fault = _column_fault(table, ["sample_id", "split", "label"])
        if fault:
            return fault
        if table.num_rows == 0:
            return "no samples"
        if table.column("split").null_count:
            return f"{table.column('split').null_count} samples without a split"
        return _ids_fault(table.column("sample_id").to_numpy(), table.num_rows, dense=True) or \
            _labels_fault(table.column("label"), num_classes, "label")
    return check


def check_label_variant(n: int, num_classes: int, clean: np.ndarray) -> Callable[[pa.Table], str | None]:
    """labels/<variant>.parquet: ids in range, labels inside the class set, clean labels those of samples."""
    def check(table: pa.Table) -> str | None:
        fault = _column_fault(table, ["sample_id", "label", "clean_label"])
        if fault:
            return fault
        ids = table.column("sample_id").to_numpy()
        fault = _ids_fault(ids, n) or _labels_fault(table.column("label"), num_classes, "label") or \
            _labels_fault(table.column("clean_label"), num_classes, "clean_label")
        if fault:
            return fault
        differ = table.column("clean_label").to_numpy(zero_copy_only=False) != clean[ids]
        if differ.any():
            return (f"{int(differ.sum())} clean labels differ from samples.parquet "
                    f"(e.g. sample_id {int(ids[differ][0])})")
        return None
    return check


def check_vectors(column: str, n: int, valid: np.ndarray) -> Callable[[pa.Table], str | None]:
    """landmarks / action_units: ids in range, a fixed-size float vector, every present row finite,
    and at least one present row among the valid crops."""
    def check(table: pa.Table) -> str | None:
        fault = _column_fault(table, ["sample_id", column])
        if fault:
            return fault
        ids = table.column("sample_id").to_numpy()
        fault = _ids_fault(ids, n)
        if fault:
            return fault
        col = table.column(column)
        if not pa.types.is_fixed_size_list(col.type) or not pa.types.is_floating(col.type.value_type):
            return f"{column} has type {col.type}, not a fixed-size list of floats"
        present = col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else np.ones(len(ids), bool)
        values = col.filter(pa.array(present)).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        finite = np.isfinite(values.reshape(int(present.sum()), -1)).all(axis=1) if values.size else \
            np.ones(0, bool)
        if not finite.all():
            return f"{int((~finite).sum())} rows of {column} hold NaN or infinite values " \
                   f"(e.g. sample_id {int(ids[present][~finite][0])})"
        if valid.any() and not valid[ids[present]].any():
            return f"no valid face has {column}"
        return None
    return check


def check_graph(n: int) -> Callable[[object], str | None]:
    """graphs/<space>.parquet (a contract.graphs.GraphArrays): ids in range, neighbours in [0, N) and not
    the row itself, similarities finite in [0, 1]."""
    def check(graph) -> str | None:
        fault = _ids_fault(graph.sample_id, n)
        if fault:
            return fault
        nbr = graph.neighbors                                                    # [R, K]
        bad = (nbr < 0) | (nbr >= n)
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            return (f"{int(bad.sum())} neighbour indices outside [0, {n}) (e.g. {int(nbr[bad][0])} in the row of "
                    f"sample_id {int(graph.sample_id[row])})")
        own = nbr == graph.sample_id[:, None]
        if own.any():
            return f"{int(own.any(axis=1).sum())} rows list their own sample as a neighbour"
        sim = graph.similarity
        if sim.shape != nbr.shape or not np.isfinite(sim).all() or (sim < 0).any() or (sim > 1).any():
            return "similarities not finite in [0, 1] (or not one per neighbour)"
        return None
    return check


def open_checked_crops(files: VersionFiles, n: int) -> tuple[np.ndarray, np.ndarray]:
    """([N, S, S, 3] uint8 read-only crops, [N] bool valid mask) of a version: the three files at their
    recorded sizes, the store read by the contract's reader (which refuses a data file of the wrong size
    and a missing or mis-sized mask), its rows against the N samples, then the three hashes."""
    names = [f"{CROPS_DIR}/{name}" for name in (store.INDEX_FILE, store.DATA_FILE, store.VALID_FILE)]
    for name in names:
        files.present(name)
    directory = files.directory / CROPS_DIR
    crops = store.open_crops(directory)                 # ArtifactError lines already point at make verify
    if crops.shape[0] != n or crops.shape[3] != 3:
        raise files.fault(names[0], f"{crops.shape[0]} crops of {list(crops.shape[1:])} for {n} samples in "
                                    f"samples.parquet")
    valid = store.read_valid_mask(directory)
    if not valid.any():
        raise files.fault(names[2], "no crop is marked valid")
    for name in names:
        files.confirm(name)
    return crops, valid
