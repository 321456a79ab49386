"""LDLVA through the generic engine on the tiny synthetic version (sym-0.30, its `va` graph):
grouped batches (ldlva) and the memory variant (ldlva_memory) train without NaNs; lambda and the centres
are per-sample/global state carried by the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.config import CONFIGS_DIR, resolve_config
from training.engine import fit


@pytest.mark.parametrize("method", ["ldlva", "ldlva_memory"])
def test_ldlva_trains_through_the_engine(tiny_overrides, method, needs_va):
    run_id = f"{method}-a"
    overrides = list(tiny_overrides) + [("noise", "sym-0.30"), ("epochs", "1"), ("batch_size", "16"),
                                        ("data.au_neighbors", "4"), ("runtime.max_steps", "3"),
                                        ("runtime.run_id", run_id)]
    config = resolve_config(method, dataset=None, config_file=CONFIGS_DIR / "tiny.yaml", overrides=overrides)
    final = fit(config)
    assert 0.0 <= final["test_accuracy"] <= 1.0
    assert 0.0 <= final["target_recovered"] <= 1.0
    run_dir = Path(dict(tiny_overrides)["runtime.runs_root"]) / run_id
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 3
    for record in train:
        for key in ("loss", "ce_loss", "centre_loss", "lambda_mean", "calibration_mean"):
            assert torch.isfinite(torch.tensor(record[key])), (key, record)
    saved = load_checkpoint(run_dir)["method"]
    assert not torch.allclose(saved["lambda_logit"], torch.full_like(saved["lambda_logit"], 0.5))
    assert saved["centres"].abs().sum() > 0
    if method == "ldlva_memory":
        assert saved["memory_seen"].sum() == 3 * 16
