"""Bounds at the door: hostile or impossible configs end in one ConfigError line before any work.

Families: YAML alias bombs, oversized, non-UTF-8 and deeply nested files, files holding a list or a scalar
(configs and dataset specs alike), every declared numeric range (each key just outside its range, for the
prepare, stage, KNN, synthetic and training configs), wrong types, and the command lines that take them.
"""
from __future__ import annotations

import dataclasses
import time
import typing

import pytest

from pipeline.config import PrepareConfig, load_prepare_config, resolve_stage_configs
from pipeline.contract.config import MAX_YAML_BYTES, build_config, load_yaml, parse_set
from pipeline.contract.errors import ConfigError
from pipeline.contract.ranges import SEED_MAX, declared_ranges, field_range
from pipeline.specs import load_spec

# 2 KB that a plain yaml.safe_load expands to 10**9 leaves when anything walks it (billion laughs).
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message and len(message) < 600, message
    return message


# --- files ----------------------------------------------------------------------------------------------

def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    assert len(ALIAS_BOMB) < 2048
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    start = time.process_time()
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert "alias *a" in _one_line(caught) and str(path) in str(caught.value)
    with pytest.raises(ConfigError, match="alias"):
        load_prepare_config(path)
    with pytest.raises(ConfigError, match="alias"):
        load_spec(path)                                       # dataset specs: the same safe loader
    with pytest.raises(ConfigError, match="alias"):
        parse_set("source={a: &a [1, 1], b: [*a, *a]}")       # a --set value too
    assert time.process_time() - start < 1.0


def test_merge_keys_are_aliases_too(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {k: 4}\ngraphs:\n  <<: *base\n")
    with pytest.raises(ConfigError, match=r"alias \*base \(line 3\)"):
        load_prepare_config(path)


def test_an_anchor_alone_is_plain_yaml(tmp_path):
    path = tmp_path / "anchor.yaml"
    path.write_text("graphs: &g {k: 5}\n")
    assert load_prepare_config(path).graphs == {"k": 5}


def test_oversized_file_is_refused_by_size_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    with pytest.raises(ConfigError) as caught:
        load_yaml(path)
    assert f"the limit is {MAX_YAML_BYTES:,}" in _one_line(caught)
    with pytest.raises(ConfigError, match="limit"):
        load_spec(path)


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", "must hold a mapping (key: value lines) at the top level, got a list"),
    ("seed: 0\x00\n", "is not valid YAML: unacceptable character #x0000"),
    ("42\n", "got a int"),
    ("just text\n", "got a str"),
    ("a: [1, 2\n", "is not valid YAML"),
    ("[" * 5000 + "]" * 5000, "nests too deeply"),
])
def test_config_and_spec_files_that_are_no_mapping_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for load in (load_yaml, load_prepare_config, load_spec):
        with pytest.raises(ConfigError) as caught:
            load(path)
        assert message in _one_line(caught)


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 0 # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_prepare_config(path)
    with pytest.raises(ConfigError, match="prepare config file not found"):
        load_prepare_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("section", ["class_map", "splits", "options"])
def test_spec_sections_of_the_wrong_shape(tmp_path, section):
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: x\nadapter: folder\n{section}: [a, b]\n")
    with pytest.raises(ConfigError, match=f"{section} must be a mapping"):
        load_spec(path)


# --- declared ranges ------------------------------------------------------------------------------------

def _stage_classes() -> dict[str, list[type]]:
    """Prepare config section -> the dataclasses its keys land on (as pipeline.config resolves them)."""
    from pipeline.knn import KnnConfig
    from pipeline.stages.action_units import AUConfig
    from pipeline.stages.faces import AlignConfig
    from pipeline.stages.graphs import GraphConfig
    from pipeline.stages.landmarks import LandmarkConfig
    from pipeline.stages.noise import NoiseConfig
    from pipeline.stages.pseudo_va import PseudoVAConfig
    from pipeline.synthetic.generator import SyntheticConfig

    return {"align": [AlignConfig], "landmarks": [LandmarkConfig], "action_units": [AUConfig],
            "graphs": [KnnConfig, GraphConfig], "noise": [NoiseConfig], "pseudo_va": [PseudoVAConfig],
            "source": [SyntheticConfig]}


def _train_config():
    from training.config import TrainConfig

    return TrainConfig


def _numeric(hint) -> bool:
    if hint in (int, float, tuple):
        return True
    return any(_numeric(a) for a in typing.get_args(hint) if a not in (Ellipsis, type(None), str))


def _unbounded(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            missing += _unbounded(hints[f.name], f"{prefix}{f.name}.")
        elif _numeric(hints[f.name]) and field_range(f) is None:
            missing.append(prefix + f.name)
    return missing


def test_every_numeric_key_has_a_declared_range_and_its_default_lies_inside():
    classes = [PrepareConfig, _train_config()] + [c for group in _stage_classes().values() for c in group]
    for cls in classes:
        assert _unbounded(cls) == [], cls.__name__
        instance = cls()
        for key, declared in declared_ranges(cls).items():
            value = instance
            for part in key.split("."):
                value = getattr(value, part)
            items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else [value]
            for item in items:
                assert not isinstance(item, (int, float)) or item in declared, (cls.__name__, key, item)


def _outside(declared, whole: bool = False) -> list[float]:
    """Values just outside a range, of the field's type (and, for a float field, NaN: outside every range)."""
    values = [] if whole else [float("nan")]
    if declared.lo is not None:
        values.append(declared.lo if declared.lo_open else declared.lo - 1)
    if declared.hi is not None:
        values.append(declared.hi if declared.hi_open else declared.hi + 1)
    return [v if whole else float(v) for v in values]


def _range_cases(classes: list[type], section: str) -> list[tuple[str, object]]:
    cases = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            declared = field_range(f)
            if declared is None or dataclasses.is_dataclass(hints[f.name]) or f.name == "num_classes":
                continue
            whole = int in (hints[f.name], *typing.get_args(hints[f.name]))
            for value in _outside(declared, whole):
                if typing.get_origin(hints[f.name]) in (tuple, list) or hints[f.name] is tuple:
                    value = [value]
                elif f.name == "sigma":
                    value = {"au": value}
                cases.append((f"{section}.{f.name}" if section else f.name, value))
    return cases


def _range_message(key: str, value) -> str:
    if isinstance(value, list):
        key, value = f"{key}[0]", value[0]
    elif isinstance(value, dict):
        key, value = f"{key}.au", value["au"]
    return f"config key {key!r}: {value!r} is outside its range"


PREPARE_CASES = _range_cases([PrepareConfig], "") + [
    case for section, classes in _stage_classes().items() for case in _range_cases(classes, section)]


@pytest.mark.parametrize(("key", "value"), PREPARE_CASES, ids=[f"{k}={v}" for k, v in PREPARE_CASES])
def test_each_prepare_range_is_checked_before_any_work(key, value):
    with pytest.raises(ConfigError) as caught:
        resolve_stage_configs(load_prepare_config(None, [(key, value)]))
    assert _range_message(key, value) in _one_line(caught)


def test_train_ranges_are_checked_for_every_bounded_key():
    from training.config import resolve_config

    defaults = _train_config()()
    cases = [(key, v) for key, declared in declared_ranges(_train_config()).items()
             for v in _outside(declared, isinstance(getattr_path(defaults, key), int))]
    assert len(cases) >= 50
    for key, value in cases:
        if isinstance(getattr_path(_train_config()(), key), tuple):
            value = [value]
        with pytest.raises(ConfigError) as caught:
            resolve_config("baseline", "synthetic", "clean", None, [(key, value)])
        assert _range_message(key, value) in _one_line(caught), key


def getattr_path(obj, key: str):
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("item", "message"), [
    ("runtime.log_every=0", "config key 'runtime.log_every': 0 is outside its range [1, 1000000000000]"),
    ("optim.lr=-1e-3", "config key 'optim.lr': -0.001 is outside its range (0, 10]"),
    ("optim.lr=.nan", "config key 'optim.lr': nan is outside its range (0, 10]"),
    ("data.image_size=0", "config key 'data.image_size': 0 is outside its range [16, 4096]"),
    ("data.groups_per_batch=0", "config key 'data.groups_per_batch': 0 is outside its range [1, 65536]"),
    ("data.eval_batch_size=-1", "config key 'data.eval_batch_size': -1 is outside its range [1, 65536]"),
    (f"runtime.seed={2**70}", f"config key 'runtime.seed': {2**70} is outside its range [0, {SEED_MAX}]"),
    ("epochs=0", "config key 'epochs': 0 is outside its range [1, 100000]"),
    ("optim.betas=[0.9, 1.0]", "config key 'optim.betas[1]': 1.0 is outside its range [0, 1)"),
    ("epochs=[2]", "config key 'epochs': cannot use [2] as int"),
    ("optim.lr=fast", "config key 'optim.lr': cannot use 'fast' as float"),
    ("runtime.seed=1.5", "config key 'runtime.seed': cannot use 1.5 as int"),
    ("data=3", "config section 'data' must be a mapping"),
    ("lr=0.1", "did you mean optim.lr?"),
])
def test_impossible_training_settings_are_one_line(item, message):
    from training.config import resolve_config

    with pytest.raises(ConfigError) as caught:
        resolve_config("baseline", "synthetic", "clean", None, [parse_set(item)])
    assert message in _one_line(caught)


@pytest.mark.parametrize(("item", "message"), [
    ("source.n=1.0e+20", "config key 'source.n': 100000000000000000000 is outside its range [0, 1000000]"),
    (f"source.n={10**20}", "config key 'source.n': 100000000000000000000 is outside its range [0, 1000000]"),
    ("source.n=1e20", "config key 'source.n': cannot use '1e20' as int"),     # YAML 1.1 reads 1e20 as text
    ("seed=-1", "config key 'seed': -1 is outside its range [0, 4294967295]"),
    ("shard_size=0", "config key 'shard_size': 0 is outside its range [1, 5000]"),
    ("noise.rates=[0.1, 1.5]", "config key 'noise.rates[1]': 1.5 is outside its range [0, 1]"),
    ("graphs.sigma={au: -1}", "config key 'graphs.sigma.au': -1.0 is outside its range > 0"),
    ("graphs.k=0", "config key 'graphs.k': 0 is outside its range [1, 4096]"),
    ("graphs.ivf_nprobe=auto", None),                  # text in an int | str field is no number
])
def test_impossible_prepare_settings_are_one_line(item, message):
    if message is None:
        resolve_stage_configs(load_prepare_config(None, [item]))
        return
    with pytest.raises(ConfigError) as caught:
        resolve_stage_configs(load_prepare_config(None, [item]))
    assert message in _one_line(caught)


def test_build_config_checks_ranges_of_a_plain_dataclass():
    from pipeline.contract.ranges import bounded

    @dataclasses.dataclass(frozen=True)
    class Fake:
        rate: float = bounded(0.5, 0, 1)
        count: int = bounded(1, 1, None)

    built = build_config(Fake, overrides=["rate=1", "count=1000000000"])
    assert built.rate == 1.0 and built.count == 10**9
    with pytest.raises(ConfigError, match=r"config key 'count': 0 is outside its range >= 1"):
        build_config(Fake, overrides=["count=0"])


# --- the command lines ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--set", "runtime.log_every=0"], ["--lr", "-1"], ["--seed", str(2**70)], ["--batch-size", "0"],
    ["--set", "data.eval_batch_size=-5"], ["--image-size", "0"], ["--groups-per-batch", "0"],
])
def test_train_cli_refuses_impossible_settings_in_one_line_before_any_data(argv, tmp_path, monkeypatch, capsys):
    from training.train import main

    monkeypatch.setenv("FER_MANIFESTS", str(tmp_path / "none"))     # no version exists: the config fails first
    assert main(["--dataset", "synthetic", "--method", "baseline", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config key") and "outside its range" in err[0], err


def test_train_cli_refuses_a_config_file_bomb_in_one_line(tmp_path, capsys):
    from training.train import main

    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert main(["--dataset", "synthetic", "--method", "baseline", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alias" in err[0]


def test_a_set_value_that_is_no_yaml_stays_text():
    key, value = parse_set("noise=sym\x000.30")          # a NUL: not YAML, the text as typed (names check it)
    assert key == "noise" and str(value) == "sym\x000.30"


def test_a_config_made_in_code_meets_the_same_ranges():
    """check_declared walks a built config (no builder involved) and gives the builder's line."""
    import dataclasses

    from pipeline.contract.ranges import check_declared
    from training.config import resolve_config

    config = resolve_config("baseline", "synthetic", "clean")
    check_declared(config)
    made = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, log_every=0))
    with pytest.raises(ConfigError, match=r"config key 'runtime.log_every': 0 is outside its range \[1, "):
        check_declared(made)
    made = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=float("nan")))
    with pytest.raises(ConfigError, match=r"'optim.lr': nan is outside"):
        check_declared(made)
