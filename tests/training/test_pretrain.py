"""training.pretrain: a backbone trained on clean labels, written under its content hash with its recipe,
that `--set model.weights=PATH` loads into every method."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.config import build_method_config, resolve_config
from training.methods import DataInfo, method_class
from training.pretrain import main, pretrain


def test_pretrain_writes_hash_named_weights_that_every_method_loads(tiny_overrides, tmp_path):
    config = resolve_config("baseline", "synthetic", "clean", None,
                            tiny_overrides + [("epochs", "1"), ("runtime.max_steps", "2"), ("batch_size", "16")])
    weights, recipe = pretrain(config, tmp_path / "pretrained", "test")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.name == f"tiny-{digest[:16]}.pt"
    stored = json.loads(weights.with_suffix(".json").read_text())
    assert stored["sha256"] == digest and stored["dataset_version"] == recipe["dataset_version"]
    assert stored["train_config"]["noise"] == "clean" and stored["prepare_config"] is not None
    state = torch.load(weights, weights_only=True)
    assert state and not any(key.startswith(("fc.", "classifier.")) for key in state)
    info = DataInfo(num_classes=7, num_train=8, class_counts=(1,) * 7, train_labels=torch.arange(8) % 7,
                    graphs={"au": (torch.zeros(8, 2, dtype=torch.long), torch.ones(8, 2)),
                            "landmarks": (torch.ones(8, 2, dtype=torch.long), torch.ones(8, 2))})
    for method in ("baseline", "ldl_alsg", "soft", "graph_vote", "ldlva"):
        run = resolve_config(method, "synthetic", "clean", None,
                             tiny_overrides + [("model.weights", str(weights))])
        built = method_class(method)(build_method_config(run), info)
        backbone = built.student.backbone if method == "soft" else built.backbone
        assert backbone.load_report is not None and not backbone.load_report.missing, method
        for key, value in state.items():
            torch.testing.assert_close(backbone.state_dict()[key], value)


def test_pretrain_refuses_noisy_labels_or_other_methods(tiny_overrides, tmp_path):
    config = resolve_config("baseline", "synthetic", "sym-0.30", None, tiny_overrides)
    with pytest.raises(ConfigError, match="clean labels"):
        pretrain(config, tmp_path, None)
    assert main(["--dataset", "synthetic", "--set", "nonsense_key=1"]) == 2
