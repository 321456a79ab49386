"""CUDA paths (bf16 autocast, channels_last, pinned memory, workers, torch.compile); skipped without CUDA."""
from __future__ import annotations

import math

import pytest
import torch

from training.config import resolve_config
from training.engine import fit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("method,compile_", [("baseline", False), ("ldl_alsg", False), ("baseline", True)])
def test_cuda_bf16_channels_last_run(method, compile_, tiny_overrides, tmp_path):
    overrides = tiny_overrides + [("runtime.device", "cuda"), ("runtime.bf16", "true"),
                                  ("runtime.channels_last", "true"), ("data.num_workers", "2"),
                                  ("data.pin_memory", "true"), ("runtime.compile", str(compile_).lower()),
                                  ("epochs", "1"), ("batch_size", "16"), ("data.groups_per_batch", "4"),
                                  ("runtime.run_id", f"cuda-{method}-{compile_}")]
    final = fit(resolve_config(method, "synthetic", "sym-0.30", None, overrides))
    assert 0.0 <= final["test_accuracy"] <= 1.0
    from training.report import read_metrics
    losses = [r["loss"] for r in read_metrics(tmp_path / "runs" / f"cuda-{method}-{compile_}" / "metrics.jsonl")
              if r["kind"] == "train"]
    assert losses and all(math.isfinite(x) for x in losses)
