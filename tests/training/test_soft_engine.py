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
