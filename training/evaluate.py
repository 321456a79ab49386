"""Evaluation: accuracy, mean class accuracy, confusion matrix; flip recovery; Jensen-Shannon divergence.

On a noisy variant, a flipped training sample is *recovered* when the model predicts its clean label and
*memorised* when it predicts the noisy label it was trained on (`flip_recovery`, the one copy: the engine
applies it to predictions and to methods' label distributions, LA-Net's diagnostics to its targets). For
datasets with votes (FERPlus; the synthetic set's true distributions), `js_divergence_bits` (the one copy,
in bits) between a method's per-sample label distributions and the votes.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from training.loader import to_device


@torch.no_grad()
def predict(method, loader, device: torch.device, channels_last: bool = False,
            autocast=contextlib.nullcontext) -> dict[str, np.ndarray]:
    """Logits [n, C] (float32), label, clean_label, sample_id for every batch of an evaluation loader."""
    was_training = method.training
    method.eval()
    logits, label, clean, sid = [], [], [], []
    for raw in loader:
        batch = to_device(raw, device, channels_last)
        with autocast():
            out = method.predict(batch["image"])
        logits.append(out.float().cpu())
        label.append(raw["label"])
        clean.append(raw["clean_label"])
        sid.append(raw["sample_id"])
    method.train(was_training)
    cat = lambda parts: torch.cat(parts).numpy()
    return {"logits": cat(logits), "label": cat(label), "clean_label": cat(clean), "sample_id": cat(sid)}


def branch_accuracies(method, loader, device: torch.device, num_classes: int, **kw) -> dict[str, float]:
    """{branch: accuracy on `loader`} for each of a method's evaluation branches (`eval_branches` with
    `set_eval_branch`, e.g. SOFT's student and teacher); the method's own branch is restored afterwards.
    {} for a method without branches. `kw` goes to `predict` (channels_last, autocast)."""
    branches = getattr(method, "eval_branches", None)
    if not branches or not hasattr(method, "set_eval_branch"):
        return {}
    chosen, scores = method.eval_branch, {}
    try:
        for branch in branches:
            method.set_eval_branch(branch)
            out = predict(method, loader, device, **kw)
            scores[branch] = classification_metrics(out["label"], out["logits"].argmax(1), num_classes)["accuracy"]
    finally:
        method.set_eval_branch(chosen)
    return scores


def confusion_matrix(target: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows = true class, columns = predicted class."""
    return np.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def classification_metrics(target: np.ndarray, pred: np.ndarray, num_classes: int) -> dict:
    """Overall accuracy, mean class accuracy (over classes present), per-class accuracy, confusion matrix."""
    cm = confusion_matrix(np.asarray(target, np.int64), np.asarray(pred, np.int64), num_classes)
    support = cm.sum(1)
    per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return {"accuracy": float(np.trace(cm) / max(1, cm.sum())),
            "mean_class_accuracy": float(np.nanmean(per_class)) if (support > 0).any() else float("nan"),
            "per_class_accuracy": [None if np.isnan(v) else float(v) for v in per_class],
            "confusion": cm.tolist(), "n": int(cm.sum())}


def flip_recovery(pred, label, clean_label) -> dict:
    """The one flip-recovery measure: how predictions treat flipped (label != clean_label) samples.

    pred, label, clean_label: [n] class ids (numpy arrays or CPU tensors); rows whose clean_label is < 0
    (unknown, e.g. a sample not seen yet) are left out. Returns
      n_flipped       how many known rows are flipped
      flipped_share   n_flipped / known rows
      recovered       share of flipped rows predicted as their clean class
      memorised       share of flipped rows predicted as the noisy label they were trained on
      kept_agreement  share of kept rows (label == clean_label) predicted as that label
    A share over no rows is NaN.
    """
    pred, label, clean = (np.asarray(a, dtype=np.int64) for a in (pred, label, clean_label))
    known = clean >= 0
    flipped, kept = known & (label != clean), known & (label == clean)

    def share(hit: np.ndarray, rows: np.ndarray) -> float:
        return float(hit[rows].mean()) if rows.any() else float("nan")

    return {"n_flipped": int(flipped.sum()), "flipped_share": int(flipped.sum()) / max(1, int(known.sum())),
            "recovered": share(pred == clean, flipped), "memorised": share(pred == label, flipped),
            "kept_agreement": share(pred == clean, kept)}


def js_divergence_bits(p, q, eps: float = 1e-12) -> np.ndarray:
    """The one Jensen-Shannon divergence, in bits (log base 2, so within [0, 1]), row-wise: [n, C], [n, C] -> [n].

    JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2 (LA-Net eq. 15). Rows are
    renormalised to sum to 1 first; terms with a zero probability count 0. Metric keys that carry it end
    in `_js_bits`.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / np.maximum(p.sum(1, keepdims=True), eps)
    q = q / np.maximum(q.sum(1, keepdims=True), eps)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        terms = a * (np.log2(np.maximum(a, eps)) - np.log2(np.maximum(b, eps)))  # [n, C]
        return np.where(a > 0, terms, 0.0).sum(1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)
