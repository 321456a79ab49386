"""Declared ranges of numeric config keys: `bounded(default, lo, hi)` fields, checked by the one builder.

    @dataclass(frozen=True)
    class OptimConfig:
        lr: float = bounded(1e-3, 0, 10, lo_open=True)      # metadata["range"] = Range(0, 10, lo_open=True)

pipeline.contract.config.build_dataclass checks every bounded field of every section it builds and fails
with one line naming the key, the value and the range (`config key 'optim.lr': -1.0 is outside its range
(0, 10]`); `declared_ranges(cls)` lists them (the trainer's `--help` shows a shortcut's range).
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping

from pipeline.contract.errors import ConfigError

SEED_MAX = 2**32 - 1            # seeds are 0..2**32-1: numpy's legacy RandomState range; torch takes 64 bits


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed (or half-open) interval a numeric field must lie in; None: unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: object) -> bool:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return bool(above and below)     # NaN compares False both ways: outside every range

    def __str__(self) -> str:
        lo, hi = _number(self.lo), _number(self.hi)
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {lo}" if self.lo is not None else "any"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def _number(value: float | None) -> str:
    """Whole numbers in full (4294967295, not 4.29e+09), others in their short form."""
    if value is not None and float(value).is_integer():
        return str(int(value))
    return f"{value:g}" if value is not None else ""


def bounded(default: object = dataclasses.MISSING, lo: float | None = None, hi: float | None = None, *,
            lo_open: bool = False, hi_open: bool = False, default_factory=dataclasses.MISSING):
    """A dataclass field with a declared range (`metadata["range"]`), checked by the builder.

    `lr: float = bounded(1e-3, 0, 10, lo_open=True)`; on a tuple, list or mapping field every item (value) is
    checked; text in a union field (`int | str`, e.g. 'auto') is not a number and passes.
    """
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"range": Range(lo, hi, lo_open, hi_open)})


def field_range(field: dataclasses.Field) -> Range | None:
    """The declared range of a field (a Range, or a plain (lo, hi) tuple read as closed), else None."""
    declared = field.metadata.get("range")
    if declared is None or isinstance(declared, Range):
        return declared
    lo, hi = declared
    return Range(lo, hi)


def check_range(key: str, value: object, declared: Range | None) -> None:
    """ConfigError naming key, value and range when a number (or an item of a sequence) lies outside it."""
    if declared is None or value is None or isinstance(value, bool):
        return
    if isinstance(value, Mapping):
        items = [(f"{key}.{k}", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    else:
        items = [(key, value)]
    for where, item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool) and item not in declared:
            raise ConfigError(f"config key {where!r}: {item!r} is outside its range {declared}")


def declared_ranges(cls: type, prefix: str = "") -> dict[str, Range]:
    """Dotted key -> declared range of every bounded field of `cls` and its nested dataclasses."""
    ranges: dict[str, Range] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if field_range(f) is not None:
            ranges[key] = field_range(f)
        if dataclasses.is_dataclass(hints.get(f.name)):
            ranges.update(declared_ranges(hints[f.name], f"{key}."))
    return ranges


def check_declared(config: object, prefix: str = "") -> None:
    """Check every declared range of a built config (and its nested configs), e.g. one made in code or read
    back from a checkpoint without the builder: the same ConfigError line the builder gives."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        check_range(f"{prefix}{f.name}", value, field_range(f))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_declared(value, f"{prefix}{f.name}.")
