"""What a new user sees: the device choice with its reason, one line when a CUDA recipe meets a CPU,
a progress bar per epoch, and the run's report path and TensorBoard command at the end of `train`."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.config import CONFIGS_DIR, resolve_config
from training.device import choose_device, recipe_warning, select_device
from training.train import main

PAPER_RECIPES = ("baseline", "ldl_alsg", "lanet", "soft", "ldlva", "ldlva_memory")


def test_auto_device_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, reason = select_device("auto")
    assert device.type == "cpu" and "CUDA is not available" in reason and "runtime.device=auto" in reason
    assert select_device("cpu") == (torch.device("cpu"), "runtime.device=cpu")
    with pytest.raises(ConfigError, match="runtime.device=cpu"):
        select_device("cuda")


@pytest.mark.parametrize("method", PAPER_RECIPES)
def test_paper_recipes_on_a_cpu_say_so_in_one_line_and_point_at_the_cpu_recipe(method, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = resolve_config(method, "synthetic", "clean")
    assert config.runtime.recipe_device == "cuda"
    with caplog.at_level(logging.INFO, logger="training.device"):
        assert choose_device(config).type == "cpu"
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, "device cpu: " + select_device("auto")[1]) in messages
    warnings = [m for level, m in messages if level == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"training/configs/{method}.yaml is a CUDA recipe" in warnings[0]
    assert "--config training/configs/quickstart.yaml" in warnings[0]


def test_cpu_recipes_and_cuda_runs_stay_quiet(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = resolve_config("lanet", "synthetic", "clean", CONFIGS_DIR / "tiny.yaml")
    assert config.runtime.recipe_device == "cpu"
    with caplog.at_level(logging.INFO, logger="training.device"):
        choose_device(config)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert recipe_warning("baseline", "cuda", torch.device("cuda"), "resnet18") is None
    with pytest.raises(ConfigError, match="valid choices"):
        recipe_warning("baseline", "tpu", torch.device("cpu"), "")


def test_train_shows_a_bar_per_epoch_and_ends_with_the_report_and_tensorboard(tiny_env, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", "synthetic", "--method", "baseline", "--noise", "sym-0.30",
            "--config", str(CONFIGS_DIR / "tiny.yaml"), "--epochs", "2", "--threads", "1",
            "--set", "runtime.progress=true", "--set", "runtime.tensorboard=true", "--set", "runtime.report=true",
            "--set", "runtime.run_id=first", "--runs-root", "runs"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    for epoch in (1, 2):
        assert f"epoch {epoch}/2" in err
    assert "loss=" in err and "acc=" in err and "img_s=" in err and "<" in err   # tqdm shows elapsed<ETA
    lines = out.splitlines()
    assert lines[0].startswith("test accuracy")
    assert "run: runs/first" in lines
    assert "report: runs/first/report.md" in lines
    tensorboard = [line for line in lines if line.startswith("tensorboard: ")]
    assert len(tensorboard) == 1 and tensorboard[0].endswith("--logdir runs/first/tensorboard")
    assert Path(tensorboard[0].split()[1]).name == "tensorboard"
    assert (tmp_path / "runs/first/report.md").is_file() and any((tmp_path / "runs/first/tensorboard").iterdir())
