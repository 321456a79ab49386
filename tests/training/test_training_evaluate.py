"""The trainer's single copies: flip recovery, Jensen-Shannon divergence (bits), and config coercion that
every method shares (Method.__init__)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.evaluate import flip_recovery, js_divergence_bits
from training.methods import DataInfo, method_class, method_names


def test_flip_recovery_counts_flipped_and_kept_rows_and_skips_unknown_clean_labels():
    label = np.array([0, 1, 2, 2, 1])
    clean = np.array([0, 0, 1, 2, -1])     # rows 1, 2 flipped; rows 0, 3 kept; row 4 unknown
    pred = np.array([0, 0, 2, 1, 1])
    out = flip_recovery(pred, label, clean)
    assert out["n_flipped"] == 2 and out["flipped_share"] == 0.5
    assert out["recovered"] == 0.5            # row 1 predicted as its clean class
    assert out["memorised"] == 0.5            # row 2 predicted as its noisy label
    assert out["kept_agreement"] == 0.5       # row 0 right, row 3 wrong
    none = flip_recovery(pred, label, label)
    assert none["n_flipped"] == 0 and math.isnan(none["recovered"]) and none["kept_agreement"] == 0.6
    assert flip_recovery(torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))["memorised"] == 1.0


def test_js_divergence_is_in_bits():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [2.0, 2.0]])
    q = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    js = js_divergence_bits(p, q)
    assert js[0] == pytest.approx(1.0)        # disjoint supports: 1 bit (ln 2 nats)
    assert js[1] == pytest.approx(0.0, abs=1e-12)
    # rows are renormalised: [0.5, 0.5] against [1, 0], by hand in nats, then / ln 2
    nats = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(1 / 0.75)
    assert js[2] == pytest.approx(nats / math.log(2))
    assert np.allclose(js_divergence_bits(q, p), js)


def _info() -> DataInfo:
    labels = torch.arange(24) % 7
    neighbours = (torch.arange(24).unsqueeze(1) + torch.arange(1, 5)) % 24   # [24, 4]
    graph = (neighbours, torch.ones(24, 4))
    return DataInfo(num_classes=7, num_train=24, class_counts=tuple(int((labels == c).sum()) for c in range(7)),
                    num_landmarks=68, train_labels=labels, graphs={"va": graph, "au": graph, "landmarks": graph}, has_va=True,
                    image_size=32)


@pytest.mark.parametrize("method", method_names())
def test_every_method_coerces_its_config_the_same_way(method):
    cls = method_class(method)
    from_none = cls(None, _info())
    from_dict = cls({"backbone": "tiny"}, _info())
    from_instance = cls(cls.config_class(backbone="tiny"), _info())
    for built in (from_dict, from_instance):
        assert isinstance(built.config, cls.config_class) and built.config.backbone == "tiny"
    assert isinstance(from_none.config, cls.config_class)
    with pytest.raises(ConfigError, match=cls.config_class.__name__):
        cls(["not", "a", "config"], _info())
