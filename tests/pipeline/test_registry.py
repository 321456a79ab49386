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
