"""Content hashes and their stat cache live in `pipeline.contract.hashing` (the trainer checks a version's
outputs against its lock with them too); this module keeps the store's import path."""
from __future__ import annotations

from pipeline.contract.hashing import HASH_NAME, HashCache, default_hash_cache, hash_bytes, hash_file

__all__ = ["HASH_NAME", "HashCache", "default_hash_cache", "hash_bytes", "hash_file"]
