"""SOFT through the generic engine on the tiny synthetic version (sym-0.30): a few steps without NaNs, the
teacher and the evaluation-branch choice come back from the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from training.checkpoint import load_checkpoint
from training.config import CONFIGS_DIR, resolve_config
from training.engine import fit


def test_soft_trains_through_the_engine(tiny_overrides):
    overrides = list(tiny_overrides) + [("noise", "sym-0.30"), ("epochs", "1"), ("batch_size", "16"),
                                        ("runtime.max_steps", "4"), ("runtime.run_id", "soft-a"),
                                        ("method_config.eval_branch", "teacher")]
    config = resolve_config("soft", dataset=None, config_file=CONFIGS_DIR / "tiny.yaml", overrides=overrides)
    assert config.optim.lr == 1e-3 and config.method_config["eps"] == 0.3   # tiny lr over soft.yaml's recipe
    final = fit(config)
    assert 0.0 <= final["test_accuracy"] <= 1.0
    run_dir = Path(dict(tiny_overrides)["runtime.runs_root"]) / "soft-a"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 4
    for record in train:
        for key in ("loss", "class_loss", "consistency_loss", "alpha_mean"):
            assert torch.isfinite(torch.tensor(record[key])), (key, record)
    saved = load_checkpoint(run_dir)["method"]
    assert int(saved["eval_branch_index"]) == 1
    moved = [not torch.equal(saved[f"teacher.{k}"], saved[f"student.{k}"]) for k in ("fc.weight", "fc.bias")]
    assert any(moved)            # an EMA, not a copy


def test_both_branches_are_scored_on_validation_every_epoch(tmp_path_factory, tmp_path):
    """On a version with a val split the engine logs val_accuracy_student / val_accuracy_teacher at every
    epoch end, and scoring the teacher leaves the configured evaluation branch in place."""
    import os

    from bench.prepared import prepare_small_version

    base = tmp_path_factory.getbasetemp()
    cache = os.environ.get("FER_TEST_CACHE") or str(base / "fer-cache")
    version = prepare_small_version(base / "small-version-val", n=84, crop_size=64, cache=cache,
                                    source_options={"validation": True})
    overrides = [("artifacts_root", str(version.artifacts_root)), ("manifests_root", str(version.manifests_root)),
                 ("runtime.runs_root", str(tmp_path / "runs")), ("runtime.progress", "false"),
                 ("runtime.tensorboard", "false"), ("runtime.report", "false"), ("runtime.threads", "1"),
                 ("data.num_workers", "0"), ("data.image_size", "56"), ("model.backbone", "tiny"),
                 ("noise", "sym-0.30"), ("epochs", "2"), ("batch_size", "32"), ("runtime.eval_every", "100"),
                 ("runtime.run_id", "soft-val"), ("method_config.eval_branch", "student")]
    config = resolve_config("soft", dataset=None, config_file=CONFIGS_DIR / "tiny.yaml", overrides=overrides)
    fit(config)
    records = [json.loads(line) for line in (tmp_path / "runs" / "soft-val" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["kind"] in ("epoch", "eval")]
    assert [r["epoch"] for r in scored] == [1, 2]            # one "epoch" record, then the final evaluation
    for record in scored:
        assert 0.0 <= record["val_accuracy_student"] <= 1.0 and 0.0 <= record["val_accuracy_teacher"] <= 1.0
    assert int(load_checkpoint(tmp_path / "runs" / "soft-val")["method"]["eval_branch_index"]) == 0
