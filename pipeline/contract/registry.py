"""Registries, in the manner of timm's model registry: one decorated class (or function) per name.

The one Registry of the project: stage backends, dataset source adapters and training methods all register
through it, so an unknown name lists the valid ones and a second object under one name is refused.
Each stage module holds one registry and exposes its decorator:

    BACKENDS = Registry("landmarks backend")
    register_backend = BACKENDS.register

    @register_backend("dlib")
    class DlibLandmarks: ...

    BACKENDS.get("dlib")      # the class; an unknown name raises ConfigError listing the valid ones

Adding a backend is one decorated class in one file; nothing else names backends in a chain of ifs.
Methods (training.methods.base.METHODS) and source adapters (pipeline.sources.ADAPTERS) work the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pipeline.contract.errors import ConfigError, choices_message

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> registered object (a class or a function), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@registry.register("name")`; a second object under one name is an error."""
        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ConfigError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj
        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(choices_message(self.kind, name, self.names())) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def remove(self, name: str) -> T:
        """Unregister `name` (a plug-in or a test that registered for one run); returns what it held."""
        try:
            return self._entries.pop(name)
        except KeyError:
            raise ConfigError(choices_message(self.kind, name, self.names())) from None
