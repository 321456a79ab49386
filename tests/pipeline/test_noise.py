"""Noisy-label variants: exact counts, never-self symmetric flips, the LA-Net map, seeds, files, bad input."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.contract import tables as artifacts
from pipeline.contract.classes import CANONICAL_CLASSES
from pipeline.contract.errors import ConfigError, DataError
from pipeline.stages.noise import (
    NoiseConfig,
    NoiseVariant,
    asymmetric_targets,
    check_transition,
    confusion_targets,
    make_noisy_labels,
    parse_variant,
    variant_names,
    write_noisy_labels,
    write_variant_set,
)


def make_samples(n: int = 2000, num_classes: int = 7, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n_train, n_val = int(n * 0.8), int(n * 0.1)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    return pa.table({"sample_id": np.arange(n), "split": split,
                     "label": rng.integers(0, num_classes, n).astype(np.int8)})


def columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy() for name in table.column_names}


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.45])
def test_symmetric_count_is_exact_and_never_maps_to_itself(rate):
    samples = make_samples(1999)
    table, info = make_noisy_labels(samples, f"sym-{rate:.2f}", 7)
    c = columns(table)
    train = samples.column("split").to_numpy(zero_copy_only=False) == "train"
    n_train = int(train.sum())
    assert c["flipped"].sum() == round(rate * n_train) == info["n_flipped"]
    assert (c["label"][c["flipped"]] != c["clean_label"][c["flipped"]]).all()
    assert (c["label"][~train] == c["clean_label"][~train]).all() and not c["flipped"][~train].any()
    assert ((c["label"] >= 0) & (c["label"] < 7)).all()
    assert table.schema == artifacts.LABELS_SCHEMA


def test_symmetric_targets_spread_over_all_other_classes():
    _, info = make_noisy_labels(make_samples(20000), "sym-0.50", 7)
    counts = np.array(info["transition_counts"])
    off_diagonal = counts[~np.eye(7, dtype=bool)].reshape(7, 6)
    assert (off_diagonal > 0).all()
    assert off_diagonal.min() > 0.6 * off_diagonal.mean()


@pytest.mark.parametrize("num_classes", [7, 8])
def test_asymmetric_follows_the_lanet_map_with_exact_class_counts(num_classes):
    samples = make_samples(3000, num_classes)
    table, info = make_noisy_labels(samples, "asym-0.20", num_classes)
    c = columns(table)
    names = CANONICAL_CLASSES[:num_classes]
    lanet = {"anger": "disgust", "disgust": "anger", "fear": "surprise", "happiness": "neutral",
             "sadness": "neutral", "surprise": "anger", "neutral": "sadness", "contempt": "neutral"}
    for flipped_from, to in zip(c["clean_label"][c["flipped"]], c["label"][c["flipped"]]):
        assert names[to] == lanet[names[flipped_from]]
    train = samples.column("split").to_numpy(zero_copy_only=False) == "train"
    for cls in range(num_classes):
        members = train & (c["clean_label"] == cls)
        assert c["flipped"][members].sum() == round(0.2 * members.sum())
    assert info["target_map"] == {n: lanet[n] for n in names}


def test_same_seed_same_labels_other_seed_differs():
    samples = make_samples()
    first = make_noisy_labels(samples, "sym-0.30", 7)[0]
    again = make_noisy_labels(samples, "sym-0.30", 7)[0]
    other = make_noisy_labels(samples, "sym-0.30-s1", 7)[0]
    assert first.equals(again)
    assert not np.array_equal(first.column("label").to_numpy(), other.column("label").to_numpy())
    asym = [make_noisy_labels(samples, name, 7)[0].column("label").to_numpy()
            for name in ("asym-0.20-s3", "asym-0.20-s3", "asym-0.20-s4")]
    assert np.array_equal(asym[0], asym[1]) and not np.array_equal(asym[0], asym[2])


def test_clean_variant_changes_nothing():
    table, info = make_noisy_labels(make_samples(), "clean", 7)
    assert not table.column("flipped").to_numpy().any() and info["n_flipped"] == 0
    assert info["realised_transition"] == np.eye(7).tolist()


def test_transition_matrix_is_realised_exactly():
    given = np.full((7, 7), 0.05)
    np.fill_diagonal(given, 0.7)
    samples = make_samples(7000)
    _, info = make_noisy_labels(samples, "trans", 7, transition=given)
    counts = np.array(info["transition_counts"])
    expected = given * counts.sum(axis=1, keepdims=True)
    assert np.abs(counts - expected).max() <= 1.0          # largest-remainder rounding
    assert info["given_transition"] == given.tolist()


def test_confusion_variant_flips_to_the_most_confused_class():
    confusion = np.eye(7) * 100
    confusion[0, 3], confusion[0, 5] = 7, 9                # neutral mostly confused with disgust
    confusion[4, 3] = 12                                     # fear -> surprise
    targets = confusion_targets(confusion, 7)
    assert targets[0] == 5 and targets[4] == 3 and targets[1] == -1
    table, info = make_noisy_labels(make_samples(), "conf-0.30", 7, confusion=confusion)
    c = columns(table)
    assert set(c["clean_label"][c["flipped"]]) == {0, 4}
    assert info["target_map"]["neutral"] == "disgust" and info["target_map"]["happiness"] is None


def test_transition_rows_must_sum_to_one():
    bad = np.eye(7)
    bad[2, 3] = 0.2
    with pytest.raises(ConfigError, match=r"rows must sum to 1: row 2 \(sadness\) sums to 1.2"):
        make_noisy_labels(make_samples(), "trans", 7, transition=bad)
    with pytest.raises(ConfigError, match="must be 7x7"):
        check_transition(np.eye(8), 7)
    with pytest.raises(ConfigError, match="needs a transition matrix"):
        make_noisy_labels(make_samples(), "trans", 7)
    with pytest.raises(ConfigError, match=r"variants \['conf-0.10'\] need"):
        write_variant_set("/nonexistent", make_samples(), ["clean", "conf-0.10"], 7)


def test_variant_names_parse_and_print_back():
    assert parse_variant("sym-0.30") == NoiseVariant("sym", 0.3, 0)
    assert parse_variant("asym-0.20-s3") == NoiseVariant("asym", 0.2, 3)
    assert parse_variant("sym-0.3").name == "sym-0.30"
    assert parse_variant("clean").name == "clean" and parse_variant("trans-s2").name == "trans-s2"
    for bad in ("sym", "sym-30%", "gauss-0.1", "clean-s1", "sym-1.5"):
        with pytest.raises(ConfigError):
            parse_variant(bad)
    names = variant_names()
    assert len(names) == 1 + 2 * 3 * 5 and names[0] == "clean" and "asym-0.10-s4" in names
    assert variant_names(NoiseConfig(kinds=("sym",), rates=(0.3,), seeds=(0, 2))) == \
        ["clean", "sym-0.30", "sym-0.30-s2"]
    assert asymmetric_targets(7).tolist() == [2, 0, 0, 6, 3, 6, 5]


def test_labels_outside_the_class_set_are_named():
    samples = make_samples(100)
    labels = samples.column("label").to_numpy().copy()
    labels[[3, 8]] = 7                                       # contempt in a 7-class set
    samples = samples.set_column(2, "label", pa.array(labels))
    with pytest.raises(DataError, match=r"sample_ids \[3, 8\]"):
        make_noisy_labels(samples, "sym-0.10", 7)


def test_written_file_keeps_schema_and_realised_matrix(tmp_path):
    samples = make_samples()
    table, info = make_noisy_labels(samples, "asym-0.30-s2", 7)
    path = write_noisy_labels(tmp_path / "labels", table, info)
    assert path.name == "asym-0.30-s2.parquet"
    back = artifacts.read_table(path)
    assert back.schema.remove_metadata() == artifacts.LABELS_SCHEMA and back.equals(table)
    meta = artifacts.read_metadata(path)
    assert meta["realised_transition"] == info["realised_transition"] and meta["n_flipped"] == info["n_flipped"]
    paths = write_variant_set(tmp_path / "set", samples, ["clean", "sym-0.10-s1"], 7)
    assert sorted(p.name for p in paths.values()) == ["clean.parquet", "sym-0.10-s1.parquet"]
