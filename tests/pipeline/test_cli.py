"""The one command-line grammar (pipeline.contract.cli): --config, --set and one declared alias table per command."""
from __future__ import annotations

import dataclasses

import pytest

from pipeline.contract.cli import Alias, config_parser, overrides_of
from pipeline.contract.config import build_config
from pipeline.contract.errors import ConfigError
from pipeline.contract.ranges import bounded


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = bounded(1e-3, 0, 10, lo_open=True)


@dataclasses.dataclass(frozen=True)
class Fake:
    epochs: int = bounded(40, 1, 1000)
    optim: Optim = dataclasses.field(default_factory=Optim)
    deterministic: bool = False
    options: dict = dataclasses.field(default_factory=dict)


FAKE_ALIASES = (Alias("--epochs", "epochs"), Alias("--lr", "optim.lr", help="learning rate"),
                Alias("--deterministic", "deterministic", const="true"), Alias("--opt-a", "options.a"))


def _parse(argv):
    return overrides_of(config_parser("fake", "A fake command.", FAKE_ALIASES, Fake).parse_args(argv))


def test_shortcuts_and_set_keep_command_line_order_and_the_last_wins():
    overrides = _parse(["--epochs", "2", "--set", "epochs=3", "--lr=0.5", "--deterministic", "--opt-a", "x"])
    assert [(k, str(v)) for k, v in overrides] == [("epochs", "2"), ("epochs", "3"), ("optim.lr", "0.5"),
                                                   ("deterministic", "true"), ("options.a", "x")]
    built = build_config(Fake, overrides=overrides)
    assert built.epochs == 3 and built.optim.lr == 0.5 and built.deterministic is True and built.options == {"a": "x"}
    assert build_config(Fake, overrides=_parse(["--set", "epochs=3", "--epochs", "2"])).epochs == 2


def test_help_lists_every_shortcut_with_its_key_and_range(capsys):
    with pytest.raises(SystemExit):
        config_parser("fake", "A fake command.", FAKE_ALIASES, Fake).parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--lr LR" in out and "= --set optim.lr=LR (range (0, 10]); learning rate" in out
    assert "= --set epochs=EPOCHS (range [1, 1000])" in out and "= --set deterministic=true" in out


def test_a_dotted_flag_is_refused_with_a_pointer_to_set(capsys):
    with pytest.raises(SystemExit) as caught:
        _parse(["--optim.lr", "1e-3"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --optim.lr 1e-3; give any config key as --set KEY=VALUE" in capsys.readouterr().err


def test_a_bad_set_item_is_one_config_error_when_read():
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        _parse(["--set", "epochs"])


@pytest.mark.parametrize(("table", "message"), [
    ((Alias("--x", "epochs"), Alias("--x", "optim.lr")), r"declares \['--x'\] twice"),
    ((Alias("--x", "optim.nope"),), "alias --x names 'optim.nope', no key of Fake"),
    ((Alias("--x", "nope"),), "alias --x names 'nope', no key of Fake"),
])
def test_the_alias_table_is_checked_when_the_parser_is_built(table, message):
    with pytest.raises(ConfigError, match=message):
        config_parser("fake", "A fake command.", table, Fake)


def test_every_command_declares_its_shortcuts_in_one_table():
    from bench.noise.cli import BENCH_ALIASES
    from bench.noise.cli import parse_args as bench_args
    from flows.__main__ import PREPARE_ALIASES
    from flows.__main__ import parse_args as flows_args
    from training.train import TRAIN_ALIASES
    from training.train import parse_args as train_args

    _, overrides = train_args(["--dataset", "synthetic", "--method", "baseline", "--epochs", "2", "--batch-size",
                               "32", "--lr", "1e-3", "--max-steps", "7", "--groups-per-batch", "4", "--threads", "1",
                               "--runs-root", "runs", "--run-id", "r", "--device", "cpu", "--seed", "3",
                               "--version", "abc", "--image-size", "32", "--num-workers", "0", "--deterministic"])
    assert {k for k, _ in overrides} == {a.key for a in TRAIN_ALIASES}
    args = flows_args(["prepare", "--dataset", "rafdb", "--root", "/r", "--set", "graphs.k=8"])
    assert [(k, str(v)) for k, v in overrides_of(args)] == [("dataset", "rafdb"), ("root", "/r"), ("graphs.k", "8")]
    assert {a.key for a in PREPARE_ALIASES} == {"dataset", "root"}
    _, overrides = bench_args(["--dataset", "synthetic", "--epochs", "1", "--set", "optim.lr=0.1"])
    assert [(k, str(v)) for k, v in overrides] == [("epochs", "1"), ("optim.lr", "0.1")]
    assert {a.key for a in BENCH_ALIASES} <= {a.key for a in TRAIN_ALIASES}
