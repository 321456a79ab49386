"""LA-Net through the generic engine on the tiny synthetic version (sym-0.30): trains without NaNs, writes its
per-epoch target distributions, and its per-sample state comes back from the engine's checkpoint on resume."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.contract.tables import read_table
from training.checkpoint import load_checkpoint
from training.config import CONFIGS_DIR, resolve_config
from training.engine import fit, setup, train_one_epoch
from training.methods.lanet.diagnostics import TARGETS_DIR

STATE_KEYS = ("lde.targets", "bank.expression_keys", "bank.landmark_keys", "bank.labels", "bank.confident",
              "bank.ids", "bank.pointer", "seen_sample_ids", "seen_clean_labels")


def _config(tiny_overrides, *extra):
    overrides = list(tiny_overrides) + [("noise", "sym-0.30"), ("epochs", "2"), ("batch_size", "16")] + list(extra)
    return resolve_config("lanet", dataset=None, config_file=CONFIGS_DIR / "lanet_tiny.yaml", overrides=overrides)


def test_lanet_trains_through_the_engine_and_resumes_its_state(tiny_overrides):
    final = fit(_config(tiny_overrides, ("runtime.max_steps", "5"), ("runtime.run_id", "lanet-a")))
    assert 0.0 <= final["test_accuracy"] <= 1.0
    run_dir = Path(dict(tiny_overrides)["runtime.runs_root"]) / "lanet-a"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 5
    for record in train:
        for key in ("loss", "loss_ce", "loss_lm", "loss_kl", "loss_el"):
            assert torch.isfinite(torch.tensor(record[key])), (key, record)
    evals = [r for r in records if r["kind"] == "eval"]
    assert "target_flipped_recovered" in evals[-1] and "target_recovered" in evals[-1]
    written = sorted((run_dir / TARGETS_DIR).glob("epoch_*.parquet"))
    assert written and read_table(written[-1]).num_rows > 0

    checkpoint = load_checkpoint(run_dir)
    saved = checkpoint["method"]
    one_hot = torch.nn.functional.one_hot(saved["noisy_labels"], saved["lde.targets"].shape[1]).float()
    assert not torch.equal(saved["lde.targets"], one_hot)              # the EMA targets moved
    assert int(saved["bank.pointer"]) == (5 * 16) % 256

    resumed = setup(_config(tiny_overrides, ("runtime.resume", str(run_dir)), ("runtime.run_id", "lanet-b")))
    try:
        state = dict(resumed.method.state_dict())
        for key in STATE_KEYS:
            assert torch.equal(state[key].cpu(), saved[key]), key
        assert resumed.state.step == 5
        train_one_epoch(resumed)                                         # continues without NaN
        assert torch.isfinite(resumed.method.lde.targets).all()
        assert resumed.state.step > 5
    finally:
        resumed.logger.close()
