"""The one config builder and the one `--set` parser, shared by prepare, train, the benchmark and the audit.

Layers, lowest first: dataclass defaults < YAML file(s) < `--set key.sub=value` overrides (< explicit fields a
command fixes itself). Values are parsed as YAML (`1e-3`, `true`, `[1, 2]`, `{a: 1}`) and then coerced to the
annotated type of the field they land on, recursing into nested dataclass fields. A value of the wrong type, or
a number outside its field's declared range (pipeline.contract.ranges.bounded), fails at once with one line naming the key, the
value and what is expected, before any work starts:

    >>> build_config(Config, ["x.yaml"], ["shard_size=abc"])
    ConfigError: config key 'shard_size': cannot use 'abc' as int
    >>> build_config(Config, overrides=["shard_size=0"])
    ConfigError: config key 'shard_size': 0 is outside its range [1, 5000]

Bounds at the door: YAML is read with the safe loader, aliases refused (an alias bomb of 2 KB expands to
gigabytes), files capped at MAX_YAML_BYTES, and a file must hold a mapping. The command-line side (an argparse
parser with `--config`, `--set` and a command's declared shortcut flags) is pipeline.contract.cli.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from pipeline.contract.errors import ConfigError, choices_message
from pipeline.contract.ranges import check_range, field_range

_UNION_TYPES = (typing.Union, types.UnionType)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


# --- the `--set` parser ------------------------------------------------------------------------------

def parse_set(item: str) -> tuple[str, object]:
    """'section.key=value' -> ('section.key', YAML value). Empty keys or a missing '=' raise ConfigError."""
    key, sep, raw = str(item).partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} is not KEY=VALUE (e.g. --set graphs.k=8 or --set optim.lr=1e-3)")
    return key, parse_value(raw)


class TypedText(str):
    """A value typed on the command line: its text, and `parsed`, the text read as YAML.

    A field annotated `str` takes the text as typed (so `--set version=0012` stays '0012') unless it reads as a
    list or mapping; every other field, and every untyped container, takes the YAML value.
    """

    parsed: object

    def __new__(cls, text: str, parsed: object) -> TypedText:
        obj = super().__new__(cls, text)
        obj.parsed = parsed
        return obj


def parse_value(raw: object) -> object:
    """A command-line string read as YAML ('8' -> 8, 'abc' -> 'abc', '[1, 2]' -> [1, 2]), kept with its text."""
    if not isinstance(raw, str) or isinstance(raw, TypedText):
        return raw
    try:
        parsed = parse_yaml(raw, f"value {raw!r}") if raw.strip() else ""
    except _NotYaml:
        parsed = raw                     # not YAML: keep the text; coercion reports a wrong type
    return TypedText(raw, parsed)


def plain(value: object) -> object:
    """`value` with every TypedText replaced by its YAML value (for untyped places and fingerprints)."""
    if isinstance(value, TypedText):
        return plain(value.parsed)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def set_dotted(values: dict, key: str, value: object) -> dict:
    """Set `values[a][b][c] = value` for key 'a.b.c', creating sections; returns `values` (changed in place)."""
    parts = key.split(".")
    node = values
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"config key {key!r}: {'.'.join(parts[:depth + 1])!r} is a value, not a section")
        node = child
    node[parts[-1]] = value
    return values


def overrides_to_dict(items: Iterable[str | tuple[str, object]]) -> dict:
    """Many `--set` items (strings or (key, value) pairs) -> one nested dict, later items winning."""
    values: dict = {}
    for item in items:
        key, value = (item[0], parse_value(item[1])) if isinstance(item, tuple) else parse_set(item)
        set_dotted(values, key, value)
    return values


# --- YAML layers -------------------------------------------------------------------------------------

MAX_YAML_BYTES = 1 << 20        # 1 MiB: configs and dataset specs are a few KB; more is a mistake or an attack


class _NotYaml(ConfigError):
    """Text that is not YAML (a command-line value falls back to its text; a file fails)."""


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader with aliases refused: `*name` (and `<<: *name`) raise before anything is expanded."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"uses the YAML alias *{event.anchor} (line {event.start_mark.line + 1}); aliases "
                              f"are refused (a small file could expand to gigabytes): write the value out")
        return super().compose_node(parent, index)


def parse_yaml(text: str, what: str) -> object:
    """`text` read as YAML by the safe loader, aliases refused: ConfigError naming `what` on any fault."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} is {len(text):,} characters; the limit is {MAX_YAML_BYTES:,} (MAX_YAML_BYTES)")
    loader = None
    try:
        loader = _NoAliasLoader(text)     # the reader refuses unprintable characters (a NUL) here already
        return loader.get_single_data()
    except ConfigError as exc:
        raise ConfigError(f"{what} {exc}") from None
    except yaml.YAMLError as exc:
        raise _NotYaml(f"{what} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply to be a config") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path, what: str = "config file") -> object:
    """A YAML file's value (None when empty): missing, over MAX_YAML_BYTES, not UTF-8 or not YAML -> ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {path} is {size:,} bytes; the limit is {MAX_YAML_BYTES:,} (MAX_YAML_BYTES)")
    with path.open("rb") as handle:
        data = handle.read(MAX_YAML_BYTES + 1)     # the file may have grown since stat
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    return parse_yaml(text, f"{what} {path}")


def load_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML file holding a mapping at the top level (empty file: {}); a list or a scalar -> ConfigError."""
    data = read_yaml_file(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping (key: value lines) at the top level, "
                          f"got a {type(data).__name__}")
    return data


def merge(base: Mapping, update: Mapping | None) -> dict:
    """Recursive dict merge (update wins, nested mappings merged key by key); returns a new dict."""
    out = dict(base)
    for key, value in (update or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# --- coercion to annotated types ---------------------------------------------------------------------

def _type_name(hint) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in _UNION_TYPES:
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _wrong(key: str, value: object, hint) -> ConfigError:
    return ConfigError(f"config key {key!r}: cannot use {value!r} as {_type_name(hint)}")


def _scalar(value: object, hint, key: str):
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _wrong(key, value, hint)
    if hint is int:
        if isinstance(value, bool):
            raise _wrong(key, value, hint)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _wrong(key, value, hint) from None
        if not isinstance(value, int):
            raise _wrong(key, value, hint)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _wrong(key, value, hint)
        try:
            number = float(value)
        except ValueError:
            raise _wrong(key, value, hint) from None
        if isinstance(value, str) and not math.isfinite(number) and value.strip().lower() not in ("inf", "-inf"):
            raise _wrong(key, value, hint)
        return number
    if hint is str:
        if isinstance(value, (dict, list, tuple)):
            raise _wrong(key, value, hint)
        return value if isinstance(value, str) else str(value)
    return value


def _sequence(value: object, hint, key: str) -> tuple | list:
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if args and args[-1] is Ellipsis:
        items = [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items)]
    elif args and origin is tuple:
        if len(args) != len(items):
            raise ConfigError(f"config key {key!r}: {value!r} needs {len(args)} items, got {len(items)}")
        items = [coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(items, args))]
    elif args:
        items = [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items)]
    else:
        items = [plain(v) for v in items]
    return tuple(items) if origin is tuple else items


def _union(value: object, args: tuple, key: str, hint):
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    for member in members:                # keep a value that already has one of the member types
        plain = typing.get_origin(member) or member
        if isinstance(plain, type) and isinstance(value, plain) and not (isinstance(value, bool) and plain is not bool):
            return coerce(value, member, key)
    for member in members:                # else the first member it converts to
        try:
            return coerce(value, member, key)
        except ConfigError:
            continue
    raise _wrong(key, value, hint)


def coerce(value: object, hint, key: str):
    """`value` converted to the annotated type `hint` (ConfigError naming `key` when it cannot be)."""
    if isinstance(value, TypedText):
        args = typing.get_args(hint) if typing.get_origin(hint) in _UNION_TYPES else (hint,)
        only_text = [a for a in args if a is not type(None)] == [str]       # str or str | None
        if only_text and value.parsed is not None and not isinstance(value.parsed, (list, dict)):
            return str(value)             # the text as typed (a list or mapping is still a wrong type)
        value = value.parsed
    if hint is typing.Any or hint is object:
        return plain(value)
    origin = typing.get_origin(hint)
    if origin in _UNION_TYPES:
        return _union(value, typing.get_args(hint), key, hint)
    if value is None:
        if hint is type(None):
            return None
        raise _wrong(key, value, hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config section {key!r} must be a mapping of {hint.__name__} fields, got {value!r}")
        return build_dataclass(hint, value, key)
    if hint in (tuple, list) or origin in (tuple, list):
        return _sequence(value, hint, key)
    if hint in (dict, Mapping) or origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise _wrong(key, value, hint)
        args = typing.get_args(hint)
        if len(args) == 2:
            return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return plain(dict(value))
    return _scalar(value, hint, key)


# --- building --------------------------------------------------------------------------------------------

def _leaf_hint(cls: type, key: str, prefix: str) -> str:
    """' (did you mean optim.lr?)' when `key` is a field of exactly one nested section of `cls`."""
    hints = typing.get_type_hints(cls)
    found = [f"{f.name}.{key}" for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints.get(f.name))
             and key in {sub.name for sub in dataclasses.fields(hints[f.name])}]
    if len(found) != 1:
        return ""
    return f" (did you mean {prefix + '.' if prefix else ''}{found[0]}?)"


def build_dataclass(cls: type, values: Mapping | None, prefix: str = ""):
    """An instance of dataclass `cls` from a (nested) mapping: unknown keys, wrong types and numbers outside
    their declared range raise ConfigError.

    Fields not in `values` keep their defaults; nested dataclass fields are built from nested mappings.
    `prefix` names the section in messages ('graphs' gives 'graphs.k').
    """
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"config {prefix or cls.__name__} must be a mapping of fields, got {values!r}"[:300])
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in (values or {}).items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(choices_message(f"config key in {prefix or cls.__name__}", str(key), list(fields))
                              + _leaf_hint(cls, str(key), prefix))
        kwargs[key] = coerce(value, hints[key], full)
        check_range(full, kwargs[key], field_range(fields[key]))
    try:
        return cls(**kwargs)
    except TypeError as exc:              # a __post_init__ comparing a value of the wrong type
        raise ConfigError(f"config {prefix or cls.__name__}: {exc}") from exc


def build_config(cls: type, files: Iterable[str | Path | None] = (), overrides: Iterable = (),
                 base: Mapping | None = None, fields: Mapping | None = None, what: str = "config file"):
    """THE builder: dataclass defaults < `base` < each YAML file in order < `--set` overrides < `fields`.

    `overrides` are `--set` strings or (key, value) pairs (what pipeline.contract.cli parses); `fields` are
    values a command fixes itself (None ones skipped); `what` names the files in messages.
    """
    values = dict(base or {})
    for path in files:
        if path:
            values = merge(values, load_yaml(path, what))
    values = merge(values, overrides_to_dict(overrides))
    values.update({k: v for k, v in (fields or {}).items() if v is not None})
    return build_dataclass(cls, values)
