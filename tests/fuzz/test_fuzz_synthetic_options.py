"""Synthetic source options: values of the wrong type or range are refused before any image is generated.

Generation is patched out for refusals: an option must be refused before any image exists.
"""
from __future__ import annotations

import pytest

import pipeline.sources.synthetic as synthetic_source
from pipeline.contract.errors import ConfigError
from pipeline.sources import prepare_source
from pipeline.sources.__main__ import main as sources_cli

SMALL = {"n": 2, "size": 64}
# (kind, overrides, expected: "kept" or a regex the ConfigError message must match, xfail reason)
CASES = [
    ("small_valid", {}, "kept", ""),
    ("n_negative", {"n": -1}, r"'n': -1 is outside its range \[0, 1000000\]", ""),
    ("n_huge", {"n": 1e20}, r"'n': 100000000000000000000 is outside its range \[0, 1000000\]", ""),
    ("size_too_small", {"size": 10}, r"'size': 10 is outside its range \[64, 4096\]", ""),
    ("blend_share_above_one", {"blend_share": 2}, r"blend_share", ""),
    ("rotation_above_45", {"max_rotation_deg": 90}, r"max_rotation_deg", ""),
    ("unknown_option", {"bogus": 1}, r"unknown synthetic option.*bogus", ""),
    ("intensity_range_inverted", {"min_intensity": 0.9, "max_intensity": 0.5}, r"min_intensity", ""),
    ("no_identities", {"num_identities": 0}, r"'num_identities': 0 is outside its range \[1, 100000\]", ""),
    ("size_as_list", {"size": [64]}, r"size.*\[64\]", ""),
    ("n_text", {"n": "abc"}, r"n.*abc", ""),
    ("n_float", {"n": 1.5}, r"n.*1\.5", ""),
    ("n_bool", {"n": True}, r"n.*True", ""),
    ("n_null", {"n": None}, r"n.*None", ""),
    ("seed_text", {"seed": "x"}, r"seed.*'x'", ""),
    ("noise_text", {"noise": "loud"}, r"noise.*loud", ""),
    ("num_classes_as_option", {"num_classes": 9}, r"num_classes=9 is not an option.*spec's num_classes \(7", ""),
]


def _param(kind, overrides, expected, xfail):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param({**SMALL, **overrides}, expected, id=kind, marks=marks)


def _no_generation(*args, **kwargs):
    raise AssertionError("image generation started before the options were checked")


@pytest.mark.parametrize("overrides,expected", [_param(*case) for case in CASES])
def test_synthetic_option_verdict(overrides, expected, tmp_path, monkeypatch):
    root = tmp_path / "synthetic"
    root.mkdir()
    if expected == "kept":
        result = prepare_source("synthetic", root, None, overrides=overrides, work_dir=root, progress=False)
        assert result.samples.num_rows == overrides["n"]
        return
    monkeypatch.setattr(synthetic_source, "ensure_generated", _no_generation)
    with pytest.raises(ConfigError, match=expected):
        prepare_source("synthetic", root, None, overrides=overrides, work_dir=root, progress=False)


def test_cli_wrong_type_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(synthetic_source, "ensure_generated", _no_generation)
    code = sources_cli(["synthetic", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet",
                        "--set", "n=abc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "n" in err[0] and "abc" in err[0]


def test_synthetic_kinds():
    assert len({case[0] for case in CASES}) == len(CASES) >= 12
