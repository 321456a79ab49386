"""Engine: outputs of a run, exact resume, config layering and the CLI's fail-fast messages, 2-process DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.contract.errors import ConfigError
from training.checkpoint import load_checkpoint
from training.config import resolve_config
from training.data import PreparedVersion
from training.engine import fit, lr_factor
from training.report import read_metrics
from training.train import main

ROOT = Path(__file__).resolve().parents[2]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_fit_writes_run_outputs(tiny_overrides, tiny_prepared_version, tmp_path):
    overrides = tiny_overrides + [("epochs", "2"), ("batch_size", "32"), ("runtime.report", "true"),
                                  ("runtime.tensorboard", "true"), ("runtime.run_id", "outputs")]
    config = resolve_config("baseline", "synthetic", "sym-0.30", None, overrides)
    final = fit(config)
    run_dir = tmp_path / "runs" / "outputs"
    for name in ("config.yaml", "metrics.jsonl", "results.json", "report.md", "accuracy_curves.png",
                 "confusion_matrix.png", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    v = tiny_prepared_version
    num_train = len(PreparedVersion.open(v.dataset, v.version, v.artifacts_root, v.manifests_root)
                    .split_data("train", "sym-0.30"))
    assert 0 <= final["test_accuracy"] <= 1 and final["n_flipped"] == round(0.3 * num_train)
    assert final["recovered"] + final["memorised"] <= 1
    ckpt = load_checkpoint(run_dir)
    assert ckpt["dataset_version"] == tiny_prepared_version.version
    assert ckpt["config"]["runtime"]["run_id"] == "outputs" and ckpt["epoch"] == 2
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["noise"] == "sym-0.30" and saved["model"]["backbone"] == "tiny"
    assert json.loads((run_dir / "results.json").read_text())["dataset_version"] == tiny_prepared_version.version


@pytest.mark.parametrize("method", ["baseline", "ldl_alsg"])
def test_resume_gives_the_same_next_step_loss(method, tiny_overrides, tmp_path):
    base = tiny_overrides + [("epochs", "2"), ("batch_size", "24"), ("data.groups_per_batch", "4"),
                             ("data.num_workers", "1")]
    straight = resolve_config(method, "synthetic", "sym-0.30", None, base + [("runtime.run_id", "straight"),
                                                                            ("runtime.max_steps", "7")])
    fit(straight)
    first = resolve_config(method, "synthetic", "sym-0.30", None, base + [("runtime.run_id", "split"),
                                                                         ("runtime.max_steps", "5")])
    fit(first)  # stops mid-epoch 1 with a checkpoint
    assert main(["--dataset", "synthetic", "--method", method, "--noise", "sym-0.30",
                 "--resume", str(tmp_path / "runs" / "split"), "--max-steps", "7"]) == 0
    a, b = _losses(tmp_path / "runs" / "straight"), _losses(tmp_path / "runs" / "split")
    assert sorted(a) == sorted(b) == list(range(1, 8))
    for step in (6, 7):
        assert b[step] == a[step], (step, a, b)


def test_config_layers_and_overrides(tiny_prepared_version):
    config = resolve_config("ldl_alsg", "synthetic", "clean", ROOT / "training/configs/tiny.yaml",
                            [("optim.lr", "0.01"), ("batch_size", "8"), ("method_config.lam", "0.1"),
                             ("data.au_neighbors", "2"), ("runtime.deterministic", "true")])
    assert config.data.sampler == "groups"          # from configs/ldl_alsg.yaml
    assert config.model.backbone == "tiny"          # from the --config file
    assert config.optim.lr == 0.01 and config.batch_size == 8 and config.method_config["lam"] == 0.1
    assert config.data.au_neighbors == 2 and config.runtime.deterministic is True
    with pytest.raises(ConfigError, match="valid choices"):
        resolve_config("baseline", "synthetic", "clean", None, [("no_such_key", "1")])
    with pytest.raises(ConfigError, match=r"did you mean optim\.lr\?"):     # a leaf name is no key: one hint
        resolve_config("baseline", "synthetic", "clean", None, [("lr", "0.01")])
    with pytest.raises(ConfigError, match="cannot use"):
        resolve_config("baseline", "synthetic", "clean", None, [("epochs", "many")])
    with pytest.raises(ConfigError, match="unknown config key in method_config"):
        resolve_config("baseline", "synthetic", "clean", None, [("method_config.lam", "1")])


def test_schedules():
    assert lr_factor(0, 100, 0, "linear", 0.0) == 1.0 and lr_factor(50, 100, 0, "linear", 0.0) == 0.5
    assert lr_factor(4, 100, 10, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(10, 100, 10, "cosine", 0.0) == 1.0 and lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("argv,message", [
    (["--method", "nosuch"], "unknown method 'nosuch'"),
    (["--noise", "sym-0.90"], "prepared variants: clean, sym-0.30"),
    (["--set", "version=ffffffffffffffff"], "no lock for synthetic version"),
    (["--resume", "/nonexistent/run"], "checkpoint not found"),
    (["--set", "optim.name=lion"], "valid choices: adam, adamw, sgd"),
])
def test_cli_bad_config_fails_at_once_with_a_fix(argv, message, tiny_env, tmp_path, capsys):
    args = {"--dataset": "synthetic", "--method": "baseline", "--noise": "clean"}
    rest = []
    for i in range(0, len(argv), 2):
        if argv[i] in args:
            args[argv[i]] = argv[i + 1]
        else:
            rest += argv[i:i + 2]
    cli = [x for kv in args.items() for x in kv] + rest + ["--runs-root", str(tmp_path), "--device", "cpu"]
    assert main(cli) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_dataset_version(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FER_MANIFESTS", str(tmp_path))
    assert main(["--dataset", "rafdb", "--method", "baseline", "--noise", "clean"]) == 2
    assert "make prepare DATASET=rafdb" in capsys.readouterr().err


def test_ddp_two_process_gloo_epoch(tiny_prepared_version, tmp_path):
    v = tiny_prepared_version
    env = {**os.environ, "FER_ARTIFACTS": str(v.artifacts_root), "FER_MANIFESTS": str(v.manifests_root),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29617",
           "-m", "training.train", "--dataset", v.dataset, "--method", "ldl_alsg", "--noise", "sym-0.30",
           "--config", str(ROOT / "training/configs/tiny.yaml"), "--epochs", "1", "--groups-per-batch", "4",
           "--threads", "1", "--runs-root", str(tmp_path), "--run-id", "ddp"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(r["loss"] == r["loss"] for r in train)
    steps = max(r["step"] for r in train)
    num_train = len(PreparedVersion.open(v.dataset, v.version, v.artifacts_root, v.manifests_root)
                    .split_data("train", "sym-0.30"))
    assert steps == num_train // (2 * 4)  # every training centre once, 4 groups per rank, 2 ranks
    assert any(r["kind"] == "eval" for r in records)
