"""The one config builder and `--set` parser (pipeline.contract.config), and the prepare config on top of it."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.config import load_prepare_config, resolve_stage_configs
from pipeline.contract.config import (
    build_config,
    coerce,
    merge,
    overrides_to_dict,
    parse_set,
    plain,
)
from pipeline.contract.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Inner:
    k: int = 8
    rate: float = 0.5
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    mode: int | str = "auto"
    path: str | None = None


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    options: dict = field(default_factory=dict)
    sigma: dict[str, float | str] = field(default_factory=dict)


def test_layers_defaults_yaml_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner: {k: 4, name: from-yaml}\nflag: true\n")
    built = build_config(Outer, [path], ["inner.k=16", "inner.sizes=[3, 4]", "options.a=1"])
    assert built.inner == Inner(k=16, rate=0.5, name="from-yaml", sizes=(3, 4))
    assert built.flag is True and built.options == {"a": 1}


@pytest.mark.parametrize(("item", "message"), [
    ("inner.k=abc", "config key 'inner.k': cannot use 'abc' as int"),
    ("inner.k=1.5", "config key 'inner.k': cannot use 1.5 as int"),
    ("inner.rate=fast", "config key 'inner.rate': cannot use 'fast' as float"),
    ("flag=maybe", "config key 'flag': cannot use 'maybe' as bool"),
    ("inner.sizes=[1, x]", "config key 'inner.sizes[1]': cannot use 'x' as int"),
    ("inner.name=[1, 2]", "config key 'inner.name': cannot use [1, 2] as str"),
    ("inner.nope=1", "unknown config key in inner 'nope'; valid choices: k, rate"),
    ("inner=3", "config section 'inner' must be a mapping"),
])
def test_wrong_values_fail_with_one_line_naming_key_value_and_type(item, message):
    with pytest.raises(ConfigError) as caught:
        build_config(Outer, overrides=[item])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_coercion_keeps_values_that_fit_and_converts_text():
    built = build_config(Outer, overrides=["inner.k=8.0", "inner.rate=1", "flag=yes", "inner.mode=3",
                                           "inner.path=null", "sigma.au=1", "sigma.va=auto"])
    assert built.inner.k == 8 and isinstance(built.inner.k, int)
    assert built.inner.rate == 1.0 and isinstance(built.inner.rate, float)
    assert built.flag is True and built.inner.mode == 3 and built.inner.path is None
    assert built.sigma == {"au": 1.0, "va": "auto"}
    assert coerce("7", int, "x") == 7 and coerce(True, bool, "x") is True
    with pytest.raises(ConfigError, match="as int"):
        coerce(True, int, "x")            # a bool is no count


def test_set_parser_and_merge():
    def parsed(item):                     # the YAML value beside the text as typed
        key, value = parse_set(item)
        return key, plain(value)

    assert parsed("graphs.k=8") == ("graphs.k", 8) and parse_set("graphs.k=8")[1] == "8"
    assert parsed("noise.variants=[sym-0.30, asym-0.20]") == ("noise.variants", ["sym-0.30", "asym-0.20"])
    assert parsed("root=") == ("root", "")
    for bad in ("graphs.k", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match="not KEY=VALUE"):
            parse_set(bad)
    assert plain(overrides_to_dict(["a.b=1", "a.c=2", "a.b=3"])) == {"a": {"b": 3, "c": 2}}
    with pytest.raises(ConfigError, match="'a' is a value, not a section"):
        overrides_to_dict(["a=1", "a.b=2"])
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}}


SMALL = ["source.n=12", "graphs.backend=exact", "graphs.k=4"]


@pytest.mark.parametrize(("item", "message"), [
    ("source.n=abc", "config key 'source.n': cannot use 'abc' as int"),
    ("shard_size=abc", "config key 'shard_size': cannot use 'abc' as int"),
    ("graphs.k=abc", "config key 'graphs.k': cannot use 'abc' as int"),
    ("align.crop_size=big", "config key 'align.crop_size': cannot use 'big' as int"),
    ("landmarks.batch_size=x", "config key 'landmarks.batch_size': cannot use 'x' as int"),
    ("noise.rates=[0.1, x]", "config key 'noise.rates[1]': cannot use 'x' as float"),
    ("graphs.nonsense=1", "unknown config key in graphs 'nonsense'"),
    ("source.nonsense=1", "unknown config key in source 'nonsense'"),
    ("nonsense=1", "unknown config key in PrepareConfig 'nonsense'"),
])
def test_prepare_config_errors_before_any_work(item, message):
    with pytest.raises(ConfigError) as caught:
        resolve_stage_configs(load_prepare_config(None, [*SMALL, item]))
    assert message in str(caught.value)


def test_prepare_config_resolves_typed_stage_configs(tmp_path):
    path = tmp_path / "prepare.yaml"
    path.write_text("shard_size: 50\ngraphs: {k: 6, sigma: {au: 2}}\nnoise: {variants: [sym-0.20]}\n")
    config = load_prepare_config(path, ["graphs.k=5", "align.retry_rotations_deg=[20, -20]"], dataset="synthetic")
    stages = resolve_stage_configs(config)
    assert config.shard_size == 50 and stages.graphs.knn.k == 5
    assert stages.graphs.sigma["au"] == 2.0 and stages.graphs.sigma["landmarks"] == "auto"
    assert stages.align.retry_rotations_deg == (20.0, -20.0)
    assert stages.noise == ("clean", "sym-0.20") and stages.source == {}
    assert resolve_stage_configs(load_prepare_config(None, ["source.n=12"])).source == {"n": 12}


def test_sources_cli_fails_on_a_wrong_typed_set_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline.sources", "synthetic", "--out", str(tmp_path),
                             "--quiet", "--set", "n=abc"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: config key 'n': cannot use 'abc' as int"
    assert "Traceback" not in result.stderr


def test_training_uses_the_same_builder():
    from training.config import resolve_config

    config = resolve_config("baseline", "synthetic", "clean", None, [("optim.lr", "1e-3"), ("epochs", "2")])
    assert config.optim.lr == 1e-3 and config.epochs == 2
    with pytest.raises(ConfigError, match="config key 'epochs': cannot use 'many' as int"):
        resolve_config("baseline", "synthetic", "clean", None, [("epochs", "many")])
    with pytest.raises(ConfigError, match="config key 'optim.lr': cannot use 'fast' as float"):
        resolve_config("baseline", "synthetic", "clean", None, [("optim.lr", "fast")])


def test_a_string_field_takes_the_text_as_typed_and_other_fields_its_yaml_value():
    from dataclasses import dataclass

    from pipeline.contract.config import build_dataclass, overrides_to_dict

    @dataclass(frozen=True)
    class Fields:
        version: str = "latest"
        k: int = 8
        spaces: tuple = ("au",)
        options: dict | None = None

    values = overrides_to_dict(["version=0000000000000012", "k=16", "spaces=[au, va]", "options={n: 3}"])
    built = build_dataclass(Fields, values)
    assert built.version == "0000000000000012" and type(built.version) is str
    assert built.k == 16 and built.spaces == ("au", "va") and built.options == {"n": 3}
    assert type(built.options["n"]) is int
