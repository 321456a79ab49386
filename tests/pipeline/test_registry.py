from __future__ import annotations

import pytest

from pipeline.contract.errors import ConfigError
from pipeline.contract.registry import Registry


def test_registry_returns_registered_objects_and_names_the_choices_of_an_unknown_one():
    backends: Registry[type] = Registry("test backend")

    @backends.register("alpha")
    class Alpha:
        pass

    @backends.register("beta")
    class Beta:
        pass

    assert backends.get("alpha") is Alpha and backends.names() == ("alpha", "beta") and "beta" in backends
    with pytest.raises(ConfigError, match=r"unknown test backend 'gamma'; valid choices: alpha, beta"):
        backends.get("gamma")
    with pytest.raises(ConfigError, match="registered twice"):
        backends.register("alpha")(Beta)


def test_methods_and_source_adapters_register_through_the_one_registry_and_refuse_duplicates():
    from pipeline.sources import ADAPTERS
    from training.methods import method_class, method_names, register_method
    from training.methods.base import METHODS, Method

    assert isinstance(METHODS, Registry) and isinstance(ADAPTERS, Registry)
    assert "baseline" in method_names() and {"affectnet", "rafdb", "ferplus", "folder", "synthetic"} <= set(
        ADAPTERS.names())

    class FakeBaseline(Method):           # a fake method that tries to take a built-in's name
        name = "baseline"

    with pytest.raises(ConfigError, match="method 'baseline' is registered twice"):
        register_method(FakeBaseline)
    assert method_class("baseline") is not FakeBaseline
    with pytest.raises(ConfigError, match="adapter 'rafdb' is registered twice"):
        ADAPTERS.register("rafdb")(lambda *args: None)
    with pytest.raises(ConfigError, match="unknown adapter 'nosuch'; valid choices: affectnet"):
        ADAPTERS.get("nosuch")
