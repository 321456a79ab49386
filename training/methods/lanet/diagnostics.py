"""LA-Net diagnostics: per-epoch target distributions on disk, flipped-label recovery, and (paper Table 6)
the Jensen-Shannon divergence of the estimated distributions from annotator votes.

Plain functions over tensors/numpy; the method calls them from `on_epoch_end`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline.contract.tables import vectors_to_arrow, write_table

STAGE_VERSION = "1.0.0"

TARGETS_DIR = "target_distributions"
_EPS = 1e-12


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


def flipped_recovery(targets: torch.Tensor, noisy_labels: torch.Tensor, clean_labels: torch.Tensor) -> dict[str, float]:
    """Shares of samples whose target argmax equals the clean label, for flipped and kept labels.

    clean_labels < 0 marks samples whose clean label is unknown (not seen yet); they are left out.
    Returns {"flipped_share", "flipped_recovered", "kept_agreement"}; a share over no samples is NaN.
    """
    known = clean_labels >= 0
    flipped = known & (noisy_labels != clean_labels)
    kept = known & (noisy_labels == clean_labels)
    correct = targets.argmax(dim=1) == clean_labels                 # [N]

    def share(mask: torch.Tensor) -> float:
        count = int(mask.sum())
        return float((correct & mask).sum()) / count if count else math.nan

    return {
        "flipped_share": float(flipped.sum()) / max(1, int(known.sum())),
        "flipped_recovered": share(flipped),
        "kept_agreement": share(kept),
    }


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise Jensen-Shannon divergence in bits (log base 2, so in [0, 1]): [N, C], [N, C] -> [N].

    Rows are renormalised to sum to 1 first.
    """
    p = p.double() / p.double().sum(dim=1, keepdim=True).clamp_min(_EPS)
    q = q.double() / q.double().sum(dim=1, keepdim=True).clamp_min(_EPS)
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a.clamp_min(_EPS).log2() - b.clamp_min(_EPS).log2()), torch.zeros_like(a)).sum(1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).float()


def vote_divergence(targets: torch.Tensor, noisy_labels: torch.Tensor, votes: torch.Tensor) -> dict[str, float]:
    """Mean JSD(targets, votes) against mean JSD(one-hot labels, votes) over rows with votes (sum > 0)."""
    has_votes = votes.sum(dim=1) > 0
    if not bool(has_votes.any()):
        return {}
    one_hot = torch.nn.functional.one_hot(noisy_labels.long(), targets.shape[1]).float()
    return {
        "jsd_targets_votes": float(jensen_shannon(targets[has_votes], votes[has_votes]).mean()),
        "jsd_labels_votes": float(jensen_shannon(one_hot[has_votes], votes[has_votes]).mean()),
    }
