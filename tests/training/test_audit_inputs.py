"""The label audit on bad input (one-line errors, logged skips) and its scoring rules on hand-made arrays."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from bench.prepared import _environment, run_prepare, small_overrides
from pipeline.contract.errors import ConfigError, DataError
from tests.training.conftest import TINY_CROP, TINY_SAMPLES, small_version_root
from training.audit import variants
from training.audit.__main__ import main as audit_main
from training.audit.__main__ import parse_cli
from training.audit.folds import assign_folds
from training.audit.signals import GraphView, combine, neighbour_distribution, reliability, truth_metrics

FAST = ["--folds", "2", "--set", "train.epochs=1", "--set", "train.model.backbone=tiny", "--set", "gallery=4",
        "--set", "train.batch_size=16"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = audit_main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def at_tiny(tiny_prepared_version, monkeypatch, tmp_path):
    for key, value in tiny_prepared_version.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FER_RUNS", str(tmp_path / "runs"))
    return tiny_prepared_version


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "synthetic", "--noise", "sym-0.99"], ["'sym-0.99'", "prepared variants: clean, sym-0.30"]),
    (["--dataset", "nosuch", "--noise", "clean"], ["no prepared version of 'nosuch'"]),
    (["--dataset", "synthetic", "--noise", "clean", "--set", "version=0123456789abcdef"], ["0123456789abcdef"]),
    (["--dataset", "synthetic", "--noise", "../evil"], ["variant '../evil' is not a plain name"]),
    (["--dataset", "synthetic", "--noise", "clean", "--folds", "500"], ["folds 500 is larger than class",
                                                                          "use --folds"]),
    (["--dataset", "synthetic", "--noise", "clean", "--folds", "1"], ["at least 2 folds"]),
    (["--dataset", "synthetic", "--noise", "clean", "--set", "graphs=[nosuch]"], ["'nosuch'", "au"]),
    (["--dataset", "synthetic", "--noise", "clean", "--set", "filter_by=guess"], ["'guess'", "prune_by_noise_rate"]),
    (["--dataset", "synthetic", "--noise", "clean", "--set", "nosuch=1"], ["nosuch"]),
    (["--dataset", "synthetic", "--noise", "clean", "--config", "/no/such.yaml"], ["/no/such.yaml"]),
])
def test_bad_input_is_one_line(at_tiny, argv, words):
    code, out, err = run_cli(argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for word in words:
        assert word in err


def test_an_audit_variant_that_was_never_written_is_one_line(at_tiny):
    code, _, err = run_cli(["--dataset", "synthetic", "--noise", "sym-0.30+audit-0123456789ab-relabel"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "names audit 0123456789ab" in err and "make audit" in err


def test_single_class_training_split_is_one_line(at_tiny):
    """A label set holding one class only (written where audit variants live) cannot be audited."""
    from training.data import PreparedVersion

    version = PreparedVersion.open("synthetic", "latest", at_tiny.artifacts_root, at_tiny.manifests_root)
    train = version.split_data("train", "sym-0.30")
    directory = variants.audit_directory("synthetic", version.version, "sym-0.30", "0123456789ab")
    variants.write_labels(directory, "relabel", train.sample_id, np.full(len(train), 1), train.clean_label, {})
    code, _, err = run_cli(["--dataset", "synthetic", "--noise", "sym-0.30+audit-0123456789ab-relabel", *FAST])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "single class (happiness" in err


def test_a_version_without_graphs_skips_the_graph_signals(tmp_path_factory, monkeypatch, tmp_path, caplog):
    root = tmp_path_factory.mktemp("no-graphs")
    _, cache = small_version_root(tmp_path_factory)
    env = {"FER_ARTIFACTS": str(root / "artifacts"), "FER_MANIFESTS": str(root / "manifests"), "FER_CACHE": cache}
    with _environment(env):
        run_prepare(small_overrides(TINY_SAMPLES, TINY_CROP, ("clean", "sym-0.30"), 0) + ["graphs.spaces=[]"])
    for key, value in {**env, "FER_RUNS": str(tmp_path / "runs")}.items():
        monkeypatch.setenv(key, value)
    caplog.set_level("INFO")
    code, out, err = run_cli(["--dataset", "synthetic", "--noise", "sym-0.30", *FAST])
    assert code == 0, err
    assert "has no graphs: the neighbour, outlier and near-duplicate signals are skipped" in caplog.text
    signals = [line.split(":")[0] for line in out.splitlines() if line.startswith("audit ") and "AUROC" in line]
    assert signals == ["audit cleanlab", "audit combined"]
    assert "skipped: the version has no graphs" in out


def test_folds_larger_than_a_class_and_single_class_units():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    with pytest.raises(ConfigError, match=r"folds 4 is larger than class 'sadness', which has 3 training faces; "
                                          r"use --folds 3 or fewer"):
        assign_folds(labels, 4, 0, 7)
    with pytest.raises(DataError, match="single class"):
        assign_folds(np.full(12, 2), 2, 0, 7)
    fold = assign_folds(labels, 3, 0, 7)
    assert sorted(np.bincount(fold[labels == 2])) == [1, 1, 1]            # stratified
    assert np.array_equal(fold, assign_folds(labels, 3, 0, 7))            # seeded


def test_neighbour_disagreement_is_the_weighted_share_of_other_labels():
    labels = np.array([0, 0, 1, 1])
    view = GraphView("au", neighbours=np.array([[1, 2, -1], [0, 3, 2], [3, -1, -1], [-1, -1, -1]]),
                     similarity=np.array([[0.6, 0.2, 0], [0.5, 0.5, 0.0], [0.0, 0, 0], [0, 0, 0]], np.float32),
                     distances=np.zeros((4, 3), np.float32))
    dist, has = neighbour_distribution(view, labels, 3)
    disagreement = 1 - dist[np.arange(4), labels]
    assert disagreement[0] == pytest.approx(0.2 / 0.8)      # a_ij-weighted share whose label differs
    assert disagreement[1] == pytest.approx(0.5)            # the a_ij = 0 neighbour carries no weight
    assert disagreement[2] == pytest.approx(0.0)            # all a_ij = 0: the unweighted share
    assert list(has) == [True, True, True, False]
    assert np.allclose(dist[3], [0.5, 0.5, 0.0])            # no neighbour: the given-label shares


def test_combination_weights_are_chance_corrected_agreement():
    labels = np.array([0, 1] * 50)
    onehot = np.eye(2)[labels]
    blind = np.full((100, 2), 0.5)
    assert reliability(onehot, labels) == pytest.approx(1.0)
    assert reliability(blind, labels) == pytest.approx(0.0)
    mixed, weights = combine({"cleanlab": blind, "neighbours-au": onehot}, labels, "cleanlab")
    assert weights == {"cleanlab": 0.0, "neighbours-au": 1.0} and np.allclose(mixed, onehot)
    mixed, weights = combine({"cleanlab": blind, "neighbours-au": blind}, labels, "cleanlab")
    assert weights["cleanlab"] == 1.0 and np.allclose(mixed, blind)       # nothing above chance: the model alone


def test_truth_metrics():
    flipped = np.array([True, False, True, False, False])
    score = np.array([0.9, 0.8, 0.7, 0.1, 0.0])
    m = truth_metrics(score, flipped, score > 0.75)
    assert m["n_flipped"] == 2 and m["precision_at_n_flipped"] == 0.5
    assert m["auroc"] == pytest.approx(5 / 6) and m["flagged"] == 2 and m["flag_precision"] == 0.5


def test_cli_flags_are_aliases_of_set_keys():
    assert parse_cli(["--dataset", "rafdb", "--noise", "sym-0.30", "--folds", "3", "--set", "train.epochs=2"]) == \
        [("dataset", "rafdb"), ("noise", "sym-0.30"), ("folds", "3"), ("train.epochs", "2")]
    from training.audit.config import audit_config

    config = audit_config(parse_cli(["--noise", "asym-0.30", "--set", "train.optim.lr=0.01", "--set", "graphs=va"]))
    assert config.noise == "asym-0.30" and config.train == {"optim": {"lr": 0.01}} and config.graphs == ("va",)


def test_audit_variant_names_are_checked_plain_names():
    name = variants.variant_name("asym-0.30-s2", "0123456789ab", "relabel")
    assert variants.parse_variant(name) == ("asym-0.30-s2", "0123456789ab", "relabel")
    assert variants.parse_variant("sym-0.30") is None
    with pytest.raises(ConfigError, match="not a plain name"):
        variants.variant_name("../x", "0123456789ab", "drop")
