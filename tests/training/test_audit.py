"""The label audit end to end on the tiny prepared version: 2 folds of 1 epoch, tiny backbone.

One audit per module (the `audited` fixture); the tests read its outputs, resume it, train on its cleaned
variant and re-hash the version against its lock.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.training.conftest import small_version_root
from training.audit.__main__ import main as audit_main

FAST = ["--folds", "2", "--set", "train.epochs=1", "--set", "train.model.backbone=tiny", "--set", "gallery=6",
        "--set", "neighbours_shown=2"]


@pytest.fixture(scope="module")
def audit_env(tiny_prepared_version, tmp_path_factory):
    """FER_ARTIFACTS / FER_MANIFESTS / FER_CACHE at the tiny version, FER_RUNS at a module temp dir."""
    _, cache = small_version_root(tmp_path_factory)
    env = {**tiny_prepared_version.env, "FER_CACHE": cache, "FER_RUNS": str(tmp_path_factory.mktemp("audit-runs"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def at_tiny(audit_env, monkeypatch):
    """Per test: the environment of `audit_env` again (the suite's autouse fixture points FER_* elsewhere)."""
    for key, value in audit_env.items():
        monkeypatch.setenv(key, value)
    return audit_env


@pytest.fixture(scope="module")
def audited(audit_env, tiny_prepared_version):
    """(printed lines, audit.json) of one audit of sym-0.30."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert audit_main(["--dataset", "synthetic", "--noise", "sym-0.30", *FAST]) == 0
    lines = out.getvalue().splitlines()
    directory = next(line.split(": ", 1)[1] for line in lines if line.startswith("audit: "))
    with open(os.path.join(directory, "audit.json")) as f:
        return lines, json.load(f)


def test_prints_auroc_and_precision_per_signal(audited, tiny_prepared_version):
    lines, summary = audited
    n_flipped = summary["n_flipped"]
    assert n_flipped > 0 and summary["truth_known"]
    expected = ["cleanlab", "combined"] + [f"neighbours-{s}" for s in tiny_prepared_version.graphs]
    for signal in expected:
        line = next(x for x in lines if x.startswith(f"audit {signal}: "))
        assert f"precision@{n_flipped} " in line and "AUROC " in line
        auroc = float(line.split("AUROC ")[1].split()[0])
        assert 0.0 <= auroc <= 1.0
    assert summary["graphs"] == list(tiny_prepared_version.graphs)
    assert abs(sum(summary["weights"].values()) - 1.0) < 1e-9


def test_audit_table_and_outputs(audited):
    _, summary = audited
    directory = summary["directory"]
    assert summary["directory"].endswith(f"/synthetic/{summary['version']}/sym-0.30/{summary['audit_hash']}")
    table = pq.read_table(os.path.join(directory, "audit.parquet"))
    columns = set(table.column_names)
    assert {"sample_id", "given_label", "suggested_label", "score_cleanlab", "combined_score", "flagged",
            "rank", "clean_label", "oof_probs"} <= columns
    assert table.num_rows == summary["n"]
    probs = np.stack(table.column("oof_probs").to_numpy(zero_copy_only=False))   # [n, C]
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert sorted(table.column("rank").to_pylist()) == list(range(1, summary["n"] + 1))
    assert int(np.sum(table.column("flagged").to_numpy())) == summary["flagged"]
    for name in ("audit.yaml", "report.html", "labels/drop.parquet", "labels/relabel.parquet"):
        assert os.path.isfile(os.path.join(directory, name)), name
    report = open(os.path.join(directory, "report.html")).read()
    assert report.count('src="data:image/png;base64,') >= 6 + 2      # gallery faces, histograms, PR curves
    assert "http://" not in report and "https://" not in report        # self-contained


def test_cleaned_variants_drop_and_relabel_the_flagged(audited):
    _, summary = audited
    directory = summary["directory"]
    audit = pq.read_table(os.path.join(directory, "audit.parquet")).to_pandas().set_index("sample_id")
    drop = pq.read_table(os.path.join(directory, "labels/drop.parquet")).to_pandas().set_index("sample_id")
    relabel = pq.read_table(os.path.join(directory, "labels/relabel.parquet")).to_pandas().set_index("sample_id")
    flagged = audit["flagged"]
    assert (drop.loc[flagged, "label"] == -1).all()
    assert (drop.loc[~flagged, "label"] == audit.loc[~flagged, "given_label"]).all()
    assert (relabel.loc[flagged, "label"] == audit.loc[flagged, "suggested_label"]).all()
    assert (relabel.loc[~flagged, "label"] == audit.loc[~flagged, "given_label"]).all()


def test_rerun_resumes_finished_folds_and_gives_the_same_audit(audited, at_tiny, caplog):
    _, summary = audited
    directory = summary["directory"]
    before = open(os.path.join(directory, "audit.parquet"), "rb").read()
    oof1 = os.path.join(directory, "oof", "fold1.npz")
    stamp = os.stat(oof1).st_mtime_ns
    os.remove(os.path.join(directory, "oof", "fold2.npz"))            # as if killed during fold 2
    shutil.rmtree(os.path.join(directory, "runs", "fold2"))
    caplog.set_level("INFO")
    assert audit_main(["--dataset", "synthetic", "--noise", "sym-0.30", *FAST]) == 0
    assert os.stat(oof1).st_mtime_ns == stamp                          # fold 1 not retrained
    assert "1 of 2 folds finished earlier" in caplog.text
    assert open(os.path.join(directory, "audit.parquet"), "rb").read() == before   # same seed, same audit


def test_folds_on_worker_processes_give_the_same_audit(audited, at_tiny):
    _, summary = audited
    directory = summary["directory"]
    before = open(os.path.join(directory, "audit.parquet"), "rb").read()
    shutil.rmtree(os.path.join(directory, "oof"))
    shutil.rmtree(os.path.join(directory, "runs"))
    assert audit_main(["--dataset", "synthetic", "--noise", "sym-0.30", *FAST, "--set", "jobs=2"]) == 0
    assert sorted(os.listdir(os.path.join(directory, "oof"))) == ["fold1.npz", "fold2.npz"]
    assert open(os.path.join(directory, "audit.parquet"), "rb").read() == before   # jobs is not in the hash


def test_train_on_a_cleaned_variant_names_the_audit(audited, at_tiny, tiny_overrides):
    from training.config import resolve_config
    from training.engine import fit

    _, summary = audited
    variant = summary["cleaned_variants"]["drop"]
    assert variant == f"sym-0.30+audit-{summary['audit_hash']}-drop"
    overrides = tiny_overrides + [("epochs", "1"), ("batch_size", "16")]
    final = fit(resolve_config("baseline", "synthetic", variant, None, overrides))
    results = json.loads(open(os.path.join(final["run_dir"], "results.json")).read())
    assert results["noise"] == variant and results["dataset_version"] == summary["version"]


def test_version_stays_byte_identical(audited, at_tiny):
    from flows.__main__ import main as flows_main

    _, summary = audited
    assert flows_main(["verify", "--dataset", "synthetic", "--version", summary["version"]]) == 0
    assert not list((p for p in os.listdir(os.path.join(at_tiny["FER_ARTIFACTS"], "synthetic", summary["version"],
                                                         "labels")) if "audit" in p))
