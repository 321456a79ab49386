"""Evaluation: accuracy, mean class accuracy, confusion matrix; memorisation of flipped training labels.

On a noisy variant, a flipped training sample is *recovered* when the model predicts its clean label and
*memorised* when it predicts the noisy label it was trained on. For datasets with votes (FERPlus), the
Jensen-Shannon divergence between a method's per-sample label distributions and the votes.
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


def noise_memorisation(pred: np.ndarray, label: np.ndarray, clean_label: np.ndarray) -> dict:
    """Among flipped samples (label != clean_label): share predicted clean (recovered) / noisy (memorised)."""
    flipped = label != clean_label
    n = int(flipped.sum())
    if n == 0:
        return {"n_flipped": 0, "recovered": float("nan"), "memorised": float("nan")}
    return {"n_flipped": n, "recovered": float((pred[flipped] == clean_label[flipped]).mean()),
            "memorised": float((pred[flipped] == label[flipped]).mean())}


def js_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence (natural log) between distributions [n, C]."""
    p = p / np.maximum(p.sum(1, keepdims=True), eps)
    q = q / np.maximum(q.sum(1, keepdims=True), eps)
    m = (p + q) / 2
    kl = lambda a, b: (a * (np.log(a + eps) - np.log(b + eps))).sum(1)
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)
