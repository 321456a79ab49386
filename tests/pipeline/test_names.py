"""Names that become paths: plain_name and inside_root refuse every escape."""
from __future__ import annotations

import pytest

from pipeline.contract.errors import ConfigError
from pipeline.contract.names import inside_root, plain_name


@pytest.mark.parametrize("name", ["synthetic", "sym-0.30", "sym-0.30-s2", "4b62bd3be65d5bd0", "run_1+x", "a.b", "baseline@images"])
def test_plain_names_pass(name):
    assert plain_name("variant", name) == name


@pytest.mark.parametrize("name", ["", "..", "../x", "../../../../evil/x", "/abs/x", "a/b", "a\\b", "a\x00b",
                                  ".hidden", "a..b", "x" * 129, " lead", "-dash", None, 3])
def test_escapes_and_odd_names_refused(name):
    with pytest.raises(ConfigError, match="not a plain name"):
        plain_name("variant", name)


def test_choices_named_in_error():
    assert plain_name("method", "lanet", choices=("baseline", "lanet")) == "lanet"
    with pytest.raises(ConfigError, match="valid choices: baseline, lanet"):
        plain_name("method", "soft", choices=("baseline", "lanet"))


def test_inside_root(tmp_path):
    (tmp_path / "a").mkdir()
    assert inside_root("run", tmp_path, tmp_path / "a") == (tmp_path / "a").resolve()
    with pytest.raises(ConfigError, match="outside its root"):
        inside_root("run", tmp_path / "a", tmp_path / "a" / ".." / "b")
    (tmp_path / "a" / "link").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="outside its root"):
        inside_root("run", tmp_path / "a", tmp_path / "a" / "link" / "b")
