"""The paper recipes (configs/<method>.yaml) hold what their papers' text fixes, resolve and build."""
from __future__ import annotations

import itertools

import pytest
import torch
import torchvision

from bench.noise.plan import flatten, load_benchmark_file
from training.config import CONFIGS_DIR, build_method_config, resolve_config
from training.methods import DataInfo, method_class, method_names
from training.methods.soft import SoftConfig
from training.models import build_backbone
from training.optim import build_scheduler


def _info() -> DataInfo:
    return DataInfo(num_classes=7, num_train=20, class_counts=(3, 3, 3, 3, 3, 3, 2),
                    train_labels=torch.arange(20) % 7, has_va=True)


def _lr_curve(config, steps_per_epoch: int) -> list[float]:
    """The lr at every optimiser step of `config.epochs` epochs (a one-parameter SGD stands in)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.optim.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch, steps_per_epoch * config.epochs)
    lrs = []
    for _ in range(steps_per_epoch * config.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_ldl_alsg_follows_section_4_2():
    config = resolve_config("ldl_alsg")
    o = config.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 1e-3, 0.9, 4e-4)
    assert config.epochs == 10 and config.model.backbone == "resnet50"
    assert (config.schedule.name, config.schedule.warmup_epochs) == ("cosine", 1.0)
    assert (config.data.groups_per_batch, config.data.au_neighbors, config.data.landmark_neighbors) == (32, 4, 4)
    assert build_method_config(config).lam == 5e-4
    lrs = _lr_curve(config, steps_per_epoch=10)
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)   # one epoch of linear warm-up
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))             # then cosine decay
    assert lrs[10 + 45] == pytest.approx(0.5e-3, rel=0.02) and lrs[-1] < 1e-5


def test_soft_warms_up_for_six_epochs_by_default():
    assert SoftConfig().warmup_epochs == 6
    config = resolve_config("soft")
    assert build_method_config(config).warmup_epochs == 6
    assert config.epochs == 86 and (config.optim.lr, config.batch_size) == (1e-4, 64)


def test_ldlva_uses_the_authors_resnet18_rafdb_steps():
    config = resolve_config("ldlva")
    assert (config.optim.name, config.optim.lr, config.model.backbone) == ("adam", 1e-3, "resnet18")
    s = config.schedule
    assert (s.name, tuple(s.milestones), s.gamma) == ("step", (10, 20, 40), 0.1)
    lrs = _lr_curve(config, steps_per_epoch=2)
    for epoch, expected in ((0, 1e-3), (9, 1e-3), (10, 1e-4), (19, 1e-4), (20, 1e-5), (40, 1e-6), (59, 1e-6)):
        assert lrs[2 * epoch] == pytest.approx(expected), epoch
    memory = resolve_config("ldlva_memory")
    assert tuple(memory.schedule.milestones) == (10, 20, 40) and memory.optim.lr == 1e-3


@pytest.mark.parametrize("method", ["ldl_alsg", "soft", "ldlva"])
def test_paper_recipes_build_their_method(method):
    config = resolve_config(method)
    built = method_class(method)(build_method_config(config), _info())
    assert sum(p.numel() for p in built.parameters()) > 1e6


def test_every_bundled_config_resolves():
    """Method recipes, CPU layers (tiny, lanet_tiny, ldlva_affectnet) and the benchmark files."""
    methods = set(method_names())
    for path in sorted(CONFIGS_DIR.glob("*.yaml")):
        options, common, per_method = load_benchmark_file(path)
        if path.stem in methods:
            resolve_config(path.stem)
        elif options or per_method or path.stem.startswith("benchmark"):
            for method in sorted(methods - {"va_regression"}):
                layer = flatten(common) + flatten(per_method.get(method) or {})
                resolve_config(method, overrides=layer)
        else:
            base = next((m for m in ("ldlva", "lanet") if path.stem.startswith(m)), "baseline")
            resolve_config(base, config_file=path)


@pytest.mark.parametrize("name,size", [("resnet_small", 32), ("resnet_small", 64), ("resnet_small_w32", 48)])
def test_small_resnet_shapes(name, size):
    net, dim = build_backbone(name)
    assert dim == {"resnet_small": 128, "resnet_small_w32": 256}[name]
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 3, size, size)).shape == (2, dim)


def test_resnet50_loads_weights_through_the_resnet18_path(tmp_path):
    source = torchvision.models.resnet50(weights=None, num_classes=8)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "resnet50_affectnet_raf.pth"
    torch.save({"state_dict": state}, path)
    net, dim = build_backbone("resnet50", path)
    assert dim == 2048
    report = net.load_report
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.dropped_head) == ["module.fc.bias", "module.fc.weight"]
    torch.testing.assert_close(net.state_dict()["layer4.2.bn3.running_var"],
                               source.state_dict()["layer4.2.bn3.running_var"])
