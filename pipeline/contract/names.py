"""Names that become paths: one check for every one of them.

A dataset, a spec's `name`, a noise variant, a version id, a run id, a graph space, a method or an
audit name each ends up as one component of a path under a declared root (artifacts, manifests, runs,
cache). `plain_name` accepts only a plain, single path component, so no name can climb out of its
root (`../x`), jump to another one (`/etc/x`), hide (`.x`) or cut a path short (NUL):

    plain_name("variant", "sym-0.30")                      # 'sym-0.30'
    plain_name("variant", "../../evil")                    # ConfigError naming the value and the rule
    plain_name("method", "lanet", choices=("baseline", "lanet"))

With `choices`, the name must also be one of them, and the error lists them.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from pipeline.contract.errors import ConfigError, choices_message

# A letter or digit first, then letters, digits, '.', '_', '-', '+' and '@' (the benchmark's
# `baseline@images` rows); at most 128 characters.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}")


def plain_name(kind: str, value: object, choices: Iterable[str] | None = None) -> str:
    """`value` as a checked name of `kind`, or ConfigError naming it (and the valid choices, if given)."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or ".." in value:
        shown = value if isinstance(value, str) else type(value).__name__
        raise ConfigError(
            f"{kind} {shown!r} is not a plain name: use letters, digits, '.', '_', '-', '+' or '@' "
            f"(at most 128, starting with a letter or digit; no '/', '..', NUL or empty name)"
        )
    if choices is not None:
        valid = tuple(choices)
        if value not in valid:
            raise ConfigError(choices_message(kind, value, valid))
    return value


def inside_root(kind: str, root: str | Path, path: str | Path) -> Path:
    """`path` resolved, or ConfigError when it does not lie under `root` (resolved, links followed)."""
    root_resolved = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise ConfigError(f"{kind} path {str(path)!r} lies outside its root {str(root_resolved)!r}")
    return resolved
