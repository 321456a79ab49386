"""Writes that can fail for want of room or permission, failing as one clear line (StorageError).

- `allocate(path, nbytes)`: a file's blocks allocated up front (posix_fallocate), so a memory map over it
  can never hit a full disk mid-write (SIGBUS); a full disk fails here, naming the path and the space needed.
- `no_space(path, needed)`: the StorageError of a full disk, with the space free where `path` lives.
- `require_writable(root, what, env)`: a store that must be written (read-only mount, no permission) is
  refused before any work, naming the root and the variable that moves it; `require_writable_roots()`
  checks the three a prepare writes (artefacts, manifests, cache).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.contract.errors import StorageError
from pipeline.contract.lock import artifacts_root, cache_root, manifests_root

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent); None if unknown."""
    for candidate in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def no_space(path: str | Path, needed: int | None = None, hint: str = "FER_ARTIFACTS") -> StorageError:
    """The one-line error of a full disk: the path, the space it needs (when known) and the space free."""
    free = free_bytes(path)
    need = f"it needs {human_bytes(needed)}, " if needed is not None else ""
    have = f"{human_bytes(free)} free there" if free is not None else "free space unknown"
    return StorageError(f"no space left on device writing {path}: {need}{have}; free some space (or point {hint} "
                        f"elsewhere) and run again: finished work is kept and the rerun completes the same version")


def allocate(path: str | Path, nbytes: int, mode: str = "wb") -> None:
    """Give `path` `nbytes` of allocated, zero-filled blocks (mode "wb": a new file; "r+b": keep its bytes).

    On a full disk the file is removed (its partial blocks freed) and StorageError names the path, the
    space needed and the space free.
    """
    with open(path, mode) as handle:
        try:
            if nbytes:
                os.posix_fallocate(handle.fileno(), 0, nbytes)
            return
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
    Path(path).unlink(missing_ok=True)
    raise no_space(path, nbytes)


def require_writable(root: str | Path, what: str, env: str) -> Path:
    """`root` (created if missing), or StorageError when nothing can be written there (read-only, no permission)."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-"):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise StorageError(f"the {what} {root} is not writable ({why}): point {env} at a writable folder "
                           f"(or make it writable) and run again") from None
    return root


def require_writable_roots() -> None:
    """The roots a prepare writes: artefacts (versions, parts), manifests (locks) and the cache."""
    require_writable(artifacts_root(), "artefact root", "FER_ARTIFACTS")
    require_writable(manifests_root(), "manifest root (version locks)", "FER_MANIFESTS")
    require_writable(cache_root(), "cache", "FER_CACHE")
