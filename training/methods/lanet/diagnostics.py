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


def confident_precision(targets: torch.Tensor, clean_labels: torch.Tensor, delta: float) -> float:
    """Share of the confident targets (max share > delta, clean label known: >= 0) whose argmax is the
    clean class: how right the EL loss's pseudo-label groups are. NaN when no target is confident."""
    share, labels = targets.max(dim=1)                              # [N], [N]
    confident = (share > delta) & (clean_labels >= 0)               # [N]
    if not bool(confident.any()):
        return float("nan")
    return float((labels[confident] == clean_labels[confident]).float().mean())


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


class LDEEpochStats:
    """Running means over one epoch of what shapes the LDE's new estimate (eq. 4), batch by batch:

    lde_new_max_share (mean max share of d_new), lde_new_confident_share (d_new rows above delta),
    lde_prediction_max (mean max softmax of the predictions p_j that are aggregated), per space
    lde_<space>_contribution_mean / _row_spread (mean over rows of max - min c_ij) and
    lde_<space>_same_noisy / _same_clean (share of neighbours with the sample's noisy / clean label).
    """

    SPACES = ("expression", "landmark")

    def __init__(self, delta: float):
        self.delta = delta
        self.sums: dict[str, torch.Tensor] = {}     # on the training device: no host sync per step
        self.counts: dict[str, int] = {}

    def _add(self, name: str, values: torch.Tensor) -> None:
        total = values.float().sum()                                # scalar tensor, stays on its device
        self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.counts[name] = self.counts.get(name, 0) + values.numel()

    @torch.no_grad()
    def update(self, step: dict[str, torch.Tensor], noisy: torch.Tensor, clean: torch.Tensor | None) -> None:
        """One batch: `step` is LabelDistributionEstimator.last_step; noisy [B], clean [B] | None labels."""
        if "new" not in step:
            return
        new_max = step["new"].max(dim=1).values                     # [B]
        self._add("lde_new_max_share", new_max)
        self._add("lde_new_confident_share", new_max > self.delta)
        self._add("lde_prediction_max", step["probabilities"].max(dim=1).values)
        for space in self.SPACES:
            if f"{space}_neighbours" not in step:
                continue
            neighbours, contributions = step[f"{space}_neighbours"], step[f"{space}_contributions"]   # [B, K] each
            self._add(f"lde_{space}_contribution_mean", contributions)
            self._add(f"lde_{space}_contribution_row_spread",
                      contributions.max(dim=1).values - contributions.min(dim=1).values)
            self._add(f"lde_{space}_same_noisy", noisy[neighbours] == noisy.unsqueeze(1))
            if clean is not None:
                self._add(f"lde_{space}_same_clean", clean[neighbours] == clean.unsqueeze(1))

    def pop(self) -> dict[str, float]:
        """The epoch's means, and a fresh start."""
        out = {name: float(self.sums[name]) / max(1, self.counts[name]) for name in self.sums}
        self.sums, self.counts = {}, {}
        return out
