"""Training methods, registered by name. Importing this package registers every built-in method."""
from __future__ import annotations

import importlib
import logging

from training.methods.base import DataInfo, Method, StepInfo, method_class, method_names, register_method

log = logging.getLogger(__name__)

# Built-in method modules; each registers itself on import. A module not yet present is skipped.
BUILTIN_MODULES = ("baseline", "ldl_alsg", "lanet", "soft", "ldlva")

for _module in BUILTIN_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{_module}":
            raise

__all__ = ["DataInfo", "Method", "StepInfo", "method_class", "method_names", "register_method"]
