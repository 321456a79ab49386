"""Hostile names: every name the prepare side turns into a path refuses `../`, absolute paths, empty names
and NUL bytes in one line, before anything is written.

Kinds: the dataset (`--dataset`, verify's `--dataset`), a dataset spec's `name`, a noise variant, a graph
space (config and the graph file), a version id (verify's `--version`) and the content of `latest`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.config import load_prepare_config, resolve_stage_configs
from pipeline.contract.errors import ArtifactError, ConfigError
from pipeline.contract.graphs import graph_path
from pipeline.contract.lock import manifests_root, specs_root
from pipeline.specs import load_spec
from pipeline.verify import verify_version

from .cases import snapshot

HOSTILE = {"dotdot": "../../escaped", "absolute": "/tmp/escaped", "empty": "", "nul": "sym\x00-0.30",
           "dot": ".", "newline": "au\nx", "backslash": "..\\escaped"}


def spec_file(folder: Path, name: str) -> Path:
    """The synthetic spec with its `name` replaced (YAML double quotes carry every value, NUL included)."""
    text = (specs_root() / "synthetic.yaml").read_text()
    lines = [f"name: {json.dumps(name)}" if line.startswith("name:") else line for line in text.splitlines()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "escaped.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def resolve(**fields) -> None:
    resolve_stage_configs(load_prepare_config(None, [], **fields))


def write_latest(value: str) -> None:
    folder = manifests_root() / "versions" / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest").write_text(value + "\n")


KINDS = {
    "dataset": (ConfigError, "dataset .* is not a plain name.*valid choices: .*synthetic",
                lambda value, tmp: resolve(dataset=value)),
    "verify_dataset": (ConfigError, "dataset .* is not a plain name", lambda value, tmp: verify_version(value)),
    "spec_name": (ConfigError, "dataset spec name .* is not a plain name",
                  lambda value, tmp: load_spec(spec_file(tmp / "specs", value))),
    "noise_variant": (ConfigError, "noise variant", lambda value, tmp: resolve(noise={"variants": [value]})),
    "graph_space": (ConfigError, "graph space .* is not a plain name",
                    lambda value, tmp: resolve(graphs={"spaces": ["au", value]})),
    "graph_file": (ConfigError, "graph space .* is not a plain name", lambda value, tmp: graph_path(tmp, value)),
    "verify_version": (ConfigError, "version .* is not a plain name",
                       lambda value, tmp: verify_version("synthetic", value)),
    "latest_content": (ArtifactError, "latest pointer .* does not hold a version id",
                       lambda value, tmp: (write_latest(value), verify_version("synthetic"))),
}


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_hostile_name_is_one_line_and_writes_nothing(kind, value, tmp_path):
    error, message, attempt = KINDS[kind]
    roots = [Path(os.environ["FER_ARTIFACTS"]), Path(os.environ["FER_MANIFESTS"])]
    before = [snapshot(root, root / "versions") for root in roots]
    with pytest.raises(error, match=message) as raised:
        attempt(value, tmp_path)
    assert "\n" not in str(raised.value).strip("\n"), str(raised.value)
    assert [snapshot(root, root / "versions") for root in roots] == before


def test_a_spec_named_to_escape_writes_nothing_anywhere(tmp_path, monkeypatch):
    """`name: ../../escaped` used to put the version, parts and lock outside FER_ARTIFACTS / FER_MANIFESTS."""
    from pipeline.prepare import run_prepare

    artifacts, manifests = Path(os.environ["FER_ARTIFACTS"]), Path(os.environ["FER_MANIFESTS"])
    monkeypatch.setenv("FER_SPECS", str(spec_file(tmp_path / "specs", "../../escaped").parent))
    watched = [artifacts.parent.parent, manifests.parent, artifacts, manifests]
    before = {path: sorted(os.listdir(path)) for path in watched}
    with pytest.raises(ConfigError, match="dataset spec name '../../escaped' is not a plain name"):
        run_prepare(load_prepare_config(None, ["report=false"], dataset="escaped"), progress=False)
    assert {path: sorted(os.listdir(path)) for path in watched} == before


def test_plain_names_still_pass():
    stages = resolve_stage_configs(load_prepare_config(None, [], graphs={"spaces": ["au", "landmarks_procrustes"]},
                                                       noise={"variants": ["sym-0.30-s2"]}))
    assert stages.graphs.spaces == ("au", "landmarks_procrustes") and stages.noise == ("clean", "sym-0.30-s2")
    with pytest.raises(ConfigError, match="graph space 'AU' must be lower case"):
        resolve(graphs={"spaces": ["AU"]})
