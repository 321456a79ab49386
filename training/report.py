"""Run outputs: metrics.jsonl, TensorBoard scalars, and the end-of-run report (curves, confusion matrix)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class MetricsLogger:
    """Appends one JSON record per line to metrics.jsonl and mirrors numbers to TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl" if run_dir else None
        self.writer = None
        if run_dir and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=jsonable) + "\n")
        if self.writer is not None:
            kind, step = record.get("kind", "train"), int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def jsonable(value):
    """JSON fallback for numpy scalars and arrays (anything else becomes its str)."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_curves(records: list[dict], path: Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in records if r.get("kind") == "eval"]
    train = [r for r in records if r.get("kind") == "train"]
    if not evals and not train:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
        ax1.set(xlabel="step", ylabel="training loss", title="loss")
    for key, name in (("test_accuracy", "test accuracy"), ("test_mean_class_accuracy", "test mean class acc"),
                      ("recovered", "flipped: recovered"), ("memorised", "flipped: memorised")):
        points = [(r["epoch"], r[key]) for r in evals if isinstance(r.get(key), (int, float)) and
                  math.isfinite(r[key])]
        if points:
            ax2.plot(*zip(*points), marker="o", label=name)
    ax2.set(xlabel="epoch", ylabel="share", ylim=(0, 1), title="accuracy")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(confusion: list[list[int]], classes: tuple[str, ...], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
           title="test confusion (row-normalised)")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, final: dict, classes: tuple[str, ...], header: dict) -> Path:
    """report.md with the final numbers, accuracy curves and the confusion-matrix image."""
    records = read_metrics(run_dir / "metrics.jsonl")
    curves = plot_curves(records, run_dir / "accuracy_curves.png")
    confusion = plot_confusion(final["confusion"], classes, run_dir / "confusion_matrix.png") \
        if final.get("confusion") else None
    lines = [f"# Run {run_dir.name}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| metric | value |", "| --- | --- |"]
    for key in ("test_accuracy", "test_mean_class_accuracy", "n_flipped", "recovered", "memorised",
                "target_recovered", "votes_js_bits"):
        if key in final:
            value = final[key]
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if final.get("per_class_accuracy"):
        lines += ["", "| class | test accuracy |", "| --- | --- |"]
        lines += [f"| {c} | {'n/a' if a is None else f'{a:.3f}'} |" for c, a in zip(classes, final["per_class_accuracy"])]
    if curves:
        lines += ["", "![accuracy curves](accuracy_curves.png)"]
    if confusion:
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
