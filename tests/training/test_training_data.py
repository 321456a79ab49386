"""PreparedVersion reading, clear errors, graph-neighbour mapping, and loader batches per method needs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.contract.errors import ArtifactError
from pipeline.contract.graphs import read_graph
from training.augment import AugmentConfig
from training.data import PreparedVersion
from training.loader import SplitDataset, check_needs, to_device
from training.samplers import BatchRequest


def _open(v):
    return PreparedVersion.open(v.dataset, "latest", v.artifacts_root, v.manifests_root)


def test_open_loads_every_artefact(tiny_prepared_version):
    pv = _open(tiny_prepared_version)
    assert pv.version == tiny_prepared_version.version
    n, side = tiny_prepared_version.num_samples, tiny_prepared_version.crop_size
    assert pv.crops.shape == (n, side, side, 3) and pv.crops.dtype == np.uint8
    assert pv.landmarks.shape == (n, 68, 2) and pv.aus.shape == (n, 17)
    assert pv.votes.shape == (n, 7)
    assert pv.num_classes == 7
    assert pv.label_variants() == ["clean", "sym-0.30"]
    assert pv.graph_spaces() == list(tiny_prepared_version.graphs)
    assert {"au", "landmarks"} <= set(pv.graph_spaces())
    train = pv.split_data("train", "sym-0.30")
    assert train.flipped.sum() == round(0.3 * len(train))
    assert (train.clean_label == pv.label[train.sample_id]).all()
    test = pv.eval_split("sym-0.30")
    assert not test.flipped.any()  # test labels are never noised


def test_open_loads_valence_arousal(tiny_prepared_version, needs_va):
    pv = _open(tiny_prepared_version)
    assert pv.va.shape == (tiny_prepared_version.num_samples, 2) and "va" in pv.graph_spaces()


def test_missing_version_and_variant_say_how_to_fix(tiny_prepared_version, tmp_path):
    v = tiny_prepared_version
    with pytest.raises(ArtifactError, match="make prepare DATASET=nosuch"):
        PreparedVersion.open("nosuch", "latest", v.artifacts_root, v.manifests_root)
    with pytest.raises(ArtifactError, match="known versions"):
        PreparedVersion.open(v.dataset, "0000000000000000", v.artifacts_root, v.manifests_root)
    with pytest.raises(ArtifactError, match="prepared variants: clean, sym-0.30"):
        _open(v).labels("asym-0.40")
    with pytest.raises(ArtifactError, match="no artefacts"):
        PreparedVersion.open(v.dataset, "latest", tmp_path, v.manifests_root)


def test_train_graph_maps_neighbours_and_drops_other_splits(tiny_prepared_version):
    pv = _open(tiny_prepared_version)
    train = pv.split_data("train", "clean")
    nbr, sim = pv.train_graph("au", train)
    graph = read_graph(pv.directory / "graphs" / "au.parquet")
    is_train = np.zeros(tiny_prepared_version.num_samples, bool)
    is_train[train.sample_id] = True
    for row, sid in enumerate(train.sample_id):
        expected = [n for n in graph.neighbors[sid] if is_train[n]]  # nearest first, test samples dropped
        got = train.sample_id[nbr[row][nbr[row] >= 0]]
        assert got.tolist() == expected
        assert (nbr[row][len(expected):] == -1).all() and (sim[row][len(expected):] == 0).all()
        keep = np.isin(graph.neighbors[sid], expected)
        np.testing.assert_allclose(sim[row][:len(expected)], graph.similarity[sid][keep])


def test_loader_batch_has_contract_keys(tiny_prepared_version):
    pv = _open(tiny_prepared_version)
    train = pv.split_data("train", "sym-0.30")
    needs = {"landmarks", "aus", "votes", "two_views"} | ({"va"} if pv.va is not None else set())
    check_needs(needs, pv, "test")
    ds = SplitDataset(pv, train, AugmentConfig(56), needs, seed=1)
    raw = ds[BatchRequest(0, 0, np.arange(8))]
    batch = to_device(raw, torch.device("cpu"))
    assert batch["image"].shape == (8, 3, 56, 56) and batch["image"].dtype == torch.float32
    assert batch["image2"].shape == (8, 3, 56, 56)
    assert not torch.equal(batch["image"], batch["image2"])  # a second, different augmentation
    assert batch["landmarks"].shape == (8, 68, 2) and batch["aus"].shape == (8, 17)
    assert batch["votes"].shape == (8, 7)
    assert pv.va is None or batch["va"].shape == (8, 2)
    assert batch["index"].tolist() == list(range(8))
    assert torch.equal(batch["sample_id"], torch.from_numpy(train.sample_id[:8]))
    again = ds[BatchRequest(0, 0, np.arange(8))]
    assert torch.equal(raw["image_u8"], again["image_u8"])  # augmentation is a function of the request


def test_needs_missing_field_fails_at_once(tiny_prepared_version):
    pv = _open(tiny_prepared_version)
    pv.va = None
    with pytest.raises(Exception, match="needs \\['va'\\]"):
        check_needs({"va"}, pv, "ldlva")
    with pytest.raises(Exception, match="unknown batch fields"):
        check_needs({"depth"}, pv, "x")


def test_pickled_version_reopens_the_memmap_instead_of_copying(tiny_prepared_version):
    import pickle

    pv = _open(tiny_prepared_version)
    blob = pickle.dumps(pv)
    assert len(blob) < pv.crops.nbytes  # workers started by spawn/forkserver get a small object
    again = pickle.loads(blob)
    assert isinstance(again.crops, np.memmap) and np.array_equal(again.crops[5], pv.crops[5])
