"""LA-Net diagnostics: per-epoch target distributions on disk, flipped-label recovery, and (paper Table 6)
the Jensen-Shannon divergence of the estimated distributions from annotator votes.

Plain functions over tensors/numpy; the method calls them from `on_epoch_end`. The measures themselves
are training.evaluate's single copies (flip_recovery, js_divergence_bits).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.contract.tables import vectors_to_arrow, write_table
from training.evaluate import flip_recovery, js_divergence_bits

STAGE_VERSION = "1.0.0"

TARGETS_DIR = "target_distributions"


def targets_path(out_dir: str | Path, epoch: int) -> Path:
    """<out_dir>/target_distributions/epoch_<NNN>.parquet (`epoch` as the engine passes it to on_epoch_end)."""
    return Path(out_dir) / TARGETS_DIR / f"epoch_{epoch:03d}.parquet"


def write_target_distributions(path: str | Path, sample_ids: torch.Tensor, distributions: torch.Tensor,
                               labels: torch.Tensor, metadata: dict | None = None) -> Path:
    """Parquet with sample_id (int64), distribution (fixed_size_list<float32>[C]) and the noisy label.

    Rows whose sample id is unknown (< 0: never seen in a batch yet) are left out; `metadata` records
    how many.
    """
    ids = sample_ids.detach().cpu().numpy().astype(np.int64)
    seen = ids >= 0
    table = pa.table({
        "sample_id": pa.array(ids[seen]),
        "distribution": vectors_to_arrow(distributions.detach().float().cpu().numpy()[seen]),
        "label": pa.array(labels.detach().cpu().numpy().astype(np.int8)[seen]),
    })
    meta = dict(metadata or {})
    meta["unseen_rows"] = int((~seen).sum())
    return write_table(path, table, meta)


def target_recovery(targets: torch.Tensor, noisy_labels: torch.Tensor, clean_labels: torch.Tensor) -> dict[str, float]:
    """training.evaluate.flip_recovery of the targets' argmax [N], under LA-Net's metric names.

    clean_labels < 0 marks samples whose clean label is unknown (not seen yet); they are left out.
    Returns {"flipped_share", "flipped_recovered", "kept_agreement"}; a share over no samples is NaN.
    """
    out = flip_recovery(targets.argmax(dim=1).cpu(), noisy_labels.cpu(), clean_labels.cpu())
    return {"flipped_share": out["flipped_share"], "flipped_recovered": out["recovered"],
            "kept_agreement": out["kept_agreement"]}


def vote_divergence(targets: torch.Tensor, noisy_labels: torch.Tensor, votes: torch.Tensor) -> dict[str, float]:
    """Mean JS divergence in bits (training.evaluate.js_divergence_bits) of the targets from the votes,
    against that of the one-hot noisy labels, over rows with votes (sum > 0)."""
    has_votes = votes.sum(dim=1) > 0
    if not bool(has_votes.any()):
        return {}
    one_hot = torch.nn.functional.one_hot(noisy_labels.long(), targets.shape[1]).float()
    rows = votes[has_votes].detach().cpu()
    return {
        "targets_votes_js_bits": float(js_divergence_bits(targets[has_votes].detach().cpu(), rows).mean()),
        "labels_votes_js_bits": float(js_divergence_bits(one_hot[has_votes].cpu(), rows).mean()),
    }
