"""The one command-line grammar for config: `--config FILE`, `--set KEY=VALUE` and declared shortcut flags.

Every command that takes a config (prepare, train, the noise benchmark, the label audit) builds its parser
here from ONE table of aliases: each shortcut flag is a name for one `--set` key, listed by `--help`.

    TRAIN_ALIASES = (Alias("--epochs", "epochs"), Alias("--lr", "optim.lr"),
                     Alias("--deterministic", "runtime.deterministic", const="true"))
    parser = config_parser("python -m training.train", "Train one method.", TRAIN_ALIASES, TrainConfig)
    args = parser.parse_args(["--epochs", "2", "--set", "optim.lr=1e-3", "--deterministic"])
    overrides_of(args)   # [('epochs', '2'), ('optim.lr', '1e-3'), ('runtime.deterministic', 'true')]

Shortcuts and `--set` items are kept in command-line order, so the later of two settings of one key wins,
and both go to pipeline.contract.config.build_config as its `--set` layer. Anything else that looks like a
config key (`--optim.lr 1e-3`) is refused with one line pointing at `--set`.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.contract.config import parse_set
from pipeline.contract.errors import ConfigError
from pipeline.contract.ranges import declared_ranges

OVERRIDES_DEST = "config_overrides"


@dataclass(frozen=True)
class Alias:
    """`flag` is a shortcut for `--set key=VALUE`; with `const` it takes no value (`--set key=const`)."""

    flag: str
    key: str
    const: str | None = None
    help: str = ""


class _Overrides(argparse.Action):
    """Appends (key, value) or a raw `--set` item to the namespace's ordered override list."""

    def __init__(self, *args, config_key: str | None = None, **kwargs) -> None:
        self.config_key = config_key
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, OVERRIDES_DEST, None) or [])
        if self.config_key is None:
            items.append(values)                                  # '--set KEY=VALUE', parsed by overrides_of
        else:
            items.append((self.config_key, self.const if self.const is not None else values))
        setattr(namespace, OVERRIDES_DEST, items)


class ConfigArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose complaint about an unknown `--a.b` option points at `--set a.b=VALUE`."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments"):
            message += "; give any config key as --set KEY=VALUE (shortcut flags: see --help)"
        super().error(message)


def _known_key(cls: type, key: str) -> bool:
    """Whether dotted `key` names a field of `cls` (a part below a plain mapping field is not checked)."""
    import typing

    for part in key.split("."):
        fields = getattr(cls, "__dataclass_fields__", None)
        if fields is None:
            return True                   # below a dict field (e.g. method_config.lam, graphs.k)
        if part not in fields:
            return False
        cls = typing.get_type_hints(cls).get(part)
    return True


def _check_table(aliases: Sequence[Alias], config_class: type | None) -> dict:
    """The declared table is checked once: flags unique, keys real fields (when `config_class` is given)."""
    flags = [a.flag for a in aliases]
    doubled = sorted({f for f in flags if flags.count(f) > 1})
    if doubled:
        raise ConfigError(f"alias table declares {doubled} twice")
    if config_class is None:
        return {}
    for alias in aliases:
        if not _known_key(config_class, alias.key):
            raise ConfigError(f"alias {alias.flag} names {alias.key!r}, no key of {config_class.__name__}")
    return declared_ranges(config_class)


def add_config_arguments(parser: argparse.ArgumentParser, aliases: Sequence[Alias] = (),
                         config_class: type | None = None, config_help: str = "YAML config file",
                         with_config: bool = True, set_help: str = "") -> argparse.ArgumentParser:
    """Add `--config`, `--set` and the shortcut flags of `aliases` (a group of their own in --help)."""
    ranges = _check_table(aliases, config_class)
    if with_config:
        parser.add_argument("--config", default=None, metavar="FILE", help=config_help)
    parser.add_argument("--set", action=_Overrides, dest=OVERRIDES_DEST, metavar="KEY=VALUE", default=[],
                        help=set_help or "set any config key (dotted path, value read as YAML); repeatable, "
                                         "the last wins")
    if aliases:
        group = parser.add_argument_group("shortcuts (each is the --set shown; in command-line order with --set)")
        for alias in aliases:
            shown = alias.const if alias.const is not None else alias.key.split(".")[-1].upper()
            text = f"= --set {alias.key}={shown}"
            if alias.key in ranges:
                text += f" (range {ranges[alias.key]})"
            text += f"; {alias.help}" if alias.help else ""
            group.add_argument(alias.flag, action=_Overrides, dest=OVERRIDES_DEST, config_key=alias.key,
                               nargs=0 if alias.const is not None else None, const=alias.const,
                               metavar=alias.key.split(".")[-1].upper(), help=text.replace("%", "%%"))
    return parser


def config_parser(prog: str, description: str, aliases: Sequence[Alias] = (), config_class: type | None = None,
                  epilog: str | None = None, config_help: str = "YAML config file") -> ConfigArgumentParser:
    """A new parser with `--config`, `--set` and the shortcuts of `aliases` (for train, bench, audit)."""
    parser = ConfigArgumentParser(prog=prog, description=description, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_config_arguments(parser, aliases, config_class, config_help)


def overrides_of(args: argparse.Namespace) -> list[tuple[str, object]]:
    """The `--set` items and shortcut flags of parsed `args` as (key, value) pairs, in command-line order."""
    return [parse_set(item) if isinstance(item, str) else item for item in getattr(args, OVERRIDES_DEST, [])]
