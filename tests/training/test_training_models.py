"""Backbones and initial-weight loading with key remapping and a report."""
from __future__ import annotations

import pytest
import torch
import torchvision

from pipeline.contract.errors import ConfigError
from training.models import build_backbone, remap_state_dict


@pytest.mark.parametrize("name,dim", [("tiny", 64), ("resnet18", 512)])
def test_backbone_shapes(name, dim):
    net, d = build_backbone(name)
    assert d == dim
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 3, 56, 56)).shape == (2, dim)


def test_weights_load_with_prefixes_stripped_and_report(tmp_path):
    source = torchvision.models.resnet18(weights=None, num_classes=12666)  # an MS-Celeb-sized head
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.extra_branch.weight"] = torch.zeros(3)
    state["module.layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)  # wrong shape on purpose
    path = tmp_path / "msceleb.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    net, _ = build_backbone("resnet18", path)
    report = net.load_report
    assert "fc.weight" not in net.state_dict()
    assert any(k.endswith("fc.weight") for k in report.dropped_head)
    assert report.unexpected == ["extra_branch.weight"]
    assert report.mismatched and report.mismatched[0].startswith("layer1.0.conv1.weight")
    assert report.missing == ["layer1.0.conv1.weight"]
    torch.testing.assert_close(net.state_dict()["layer4.1.bn2.running_mean"],
                               source.state_dict()["layer4.1.bn2.running_mean"])


def test_remap_and_bad_paths(tmp_path):
    remapped, dropped = remap_state_dict({"module.backbone.features.conv.weight": torch.ones(1), "fc.bias": torch.ones(1)})
    assert list(remapped) == ["conv.weight"] and dropped == ["fc.bias"]
    with pytest.raises(ConfigError, match="not found"):
        build_backbone("tiny", tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="valid choices"):
        build_backbone("vgg")
    torch.save({"unrelated.weight": torch.ones(2)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="no tensor"):
        build_backbone("tiny", tmp_path / "other.pth")


def _layout(state: dict, layout: str):
    if layout == "plain":
        return state
    if layout == "state_dict":
        return {"state_dict": state, "epoch": 40, "best_acc": 0.9}
    if layout == "module":
        return {f"module.{k}": v for k, v in state.items()}
    if layout == "state_dict+module":
        return {"state_dict": {f"module.{k}": v for k, v in state.items()}, "arch": "resnet18"}
    raise AssertionError(layout)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet_small"])
@pytest.mark.parametrize("layout", ["plain", "state_dict", "module", "state_dict+module"])
def test_every_checkpoint_layout_loads_every_backbone_tensor(tmp_path, caplog, backbone, layout):
    torch.manual_seed(1)
    source, dim = build_backbone(backbone)
    state = dict(source.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(12666, dim), torch.randn(12666)  # a classifier of another size
    path = tmp_path / f"{layout}.pth"
    torch.save(_layout(state, layout), path)
    torch.manual_seed(2)
    with caplog.at_level("INFO", logger="training.models"):
        net, _ = build_backbone(backbone, path)
    report = net.load_report
    assert not report.missing and not report.unexpected and not report.mismatched
    assert len(report.dropped_head) == 2
    assert any("classifier dropped" in r.message and "(12666, " in r.message for r in caplog.records)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value)
