"""Training methods, registered by name. Importing this package registers every built-in method."""
from __future__ import annotations

import importlib

from training.methods.base import DataInfo, Method, StepInfo, method_class, method_names, register_method

# Built-in method modules; each registers itself on import (a missing one is an error, never skipped).
BUILTIN_MODULES = ("baseline", "ldl_alsg", "lanet", "soft", "ldlva", "va_regression", "graph_vote")

for _module in BUILTIN_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["DataInfo", "Method", "StepInfo", "method_class", "method_names", "register_method"]
