"""Content hashes of files, cached by (path, size, mtime) so reruns do not re-read images.

Shared by the prepare (source images, outputs for the lock) and the trainer (a version's outputs checked
against its lock before they are read, pipeline.contract.integrity), hence part of the contract.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

HASH_NAME = "blake2b-128"
_CHUNK = 1 << 20


def hash_bytes(data: bytes) -> str:
    """Hex content hash of a byte string (blake2b, 16-byte digest)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_file(path: str | Path) -> str:
    """Hex content hash of a file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """A SQLite stat cache: (absolute path, size, mtime_ns) -> content hash.

    A file whose size or mtime changed is re-read; an unchanged one is not. Safe to share
    between threads of one process (one connection guarded by a lock).
    """

    def __init__(self, db_path: str | Path | None):
        self.path = Path(db_path) if db_path else None
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        target = ":memory:"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        self._db = sqlite3.connect(target, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, digest TEXT)"
        )

    def hash(self, path: str | Path) -> str:
        """Content hash of `path`, from the cache when its stat is unchanged."""
        path = Path(path).resolve()
        stat = path.stat()
        with self._lock:
            row = self._db.execute(
                "SELECT digest FROM hashes WHERE path=? AND size=? AND mtime_ns=?",
                (str(path), stat.st_size, stat.st_mtime_ns),
            ).fetchone()
        if row is not None:
            self.hits += 1
            return row[0]
        digest = hash_file(path)
        self.misses += 1
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)",
                (str(path), stat.st_size, stat.st_mtime_ns, digest),
            )
        return digest

    def hash_many(self, paths: Iterable[str | Path]) -> list[str]:
        """Hashes of many files, committing the cache once at the end."""
        digests = [self.hash(p) for p in paths]
        self.commit()
        return digests

    def commit(self) -> None:
        with self._lock:
            self._db.commit()

    def close(self) -> None:
        self.commit()
        self._db.close()


def default_hash_cache() -> HashCache:
    """The per-user stat cache at $FER_CACHE/hashes.sqlite (default ~/.cache/fer-noise)."""
    root = Path(os.environ.get("FER_CACHE", Path.home() / ".cache" / "fer-noise"))
    return HashCache(root / "hashes.sqlite")
