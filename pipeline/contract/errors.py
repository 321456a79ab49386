"""One small error hierarchy for the whole project.

Every message names the bad value and, where there is a fixed set, the valid choices,
so a user can fix the problem without reading a stack trace.
"""
from __future__ import annotations

from collections.abc import Iterable


class FerError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(FerError):
    """Wrong configuration: unknown name, missing root, bad parameter. Fails at once."""


class DataError(FerError):
    """Input data that cannot be used as a whole (not a single bad row: those are quarantined)."""


class BackendMissingError(FerError):
    """An optional package, checkpoint or binary that a chosen backend needs is not available."""


class ArtifactError(FerError):
    """A prepared artefact is missing, incomplete or does not match the contract."""


class StorageError(FerError):
    """A write the run needs cannot be made: the disk is full, or the store is read-only. The message names
    the path and the space needed (or the root that must be made writable); finished work is kept."""


def choices_message(kind: str, value: object, choices: Iterable[object]) -> str:
    """`unknown dataset 'afectnet'; valid choices: affectnet, ferplus, ...`"""
    listed = ", ".join(str(c) for c in choices)
    return f"unknown {kind} {value!r}; valid choices: {listed}"


def require_package(module: str, package: str, hint: str = "make setup") -> object:
    """Import `module` or raise BackendMissingError naming the pip package and how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendMissingError(
            f"the Python module {module!r} is not installed; install the package {package!r} "
            f"(run `{hint}`, or `pip install {package}`): {exc}"
        ) from exc
