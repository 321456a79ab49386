"""Chained fingerprints (DVC-lock style): what identifies one stage's output.

A version id is the fingerprint of the last stage of a chain, where each stage's fingerprint hashes
its name@semantic-version, its literal parameters, its parents' fingerprints and its seed. The source
stage's parameters include the content digest of every input file, so the id depends on content and
never on where the artefact root or the dataset root lives.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

from pipeline.contract.errors import ConfigError

ID_LENGTH = 16


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
