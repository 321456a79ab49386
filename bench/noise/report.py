"""Tables and plot of the noise-robustness benchmark (bench.noise): aggregation over seeds,
Markdown in the layout of the papers' Table 1, long-format CSV and a matplotlib (Agg) bar chart."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from bench.noise.diagnostics import markdown as diagnostics_markdown

# metric key in a cell's "metrics" -> (table title, shown as a percentage)
TABLE_METRICS = {
    "test_accuracy": ("Test accuracy (%)", True),
    "test_mean_class_accuracy": ("Mean class accuracy (%)", True),
    "recovered": ("Flip recovery (%): flipped training samples predicted as their clean class", True),
    "memorised": ("Memorised (%): flipped training samples predicted as their noisy label", True),
}
# metric key at the top level of a cell record -> (table title, shown as a percentage)
CELL_FIELDS = {"train_seconds": ("Training wall seconds per cell (this machine)", False)}


def aggregate(records: list[dict], methods, variants) -> list[dict]:
    """One row per (method, variant, metric): mean, sample std (ddof 1; 0 for one seed), n, per-seed values."""
    rows = []
    for method in methods:
        for variant in variants:
            done = [r for r in records if r.get("status") == "done" and r["cell"]["method"] == method
                    and r["cell"]["variant"] == variant]
            failed = sum(1 for r in records if r.get("status") == "failed" and r["cell"]["method"] == method
                         and r["cell"]["variant"] == variant)
            for metric in (*TABLE_METRICS, *CELL_FIELDS):
                pairs = [(r["cell"]["seed"], r["metrics"].get(metric) if metric in TABLE_METRICS else r.get(metric))
                         for r in done]
                pairs = sorted((s, float(v)) for s, v in pairs if v is not None and math.isfinite(float(v)))
                values = [v for _, v in pairs]
                rows.append({"method": method, "variant": variant, "metric": metric, "n": len(values),
                             "failed": failed,
                             "mean": float(np.mean(values)) if values else None,
                             "std": float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None),
                             "seeds": [s for s, _ in pairs], "values": values})
    return rows


def _cell_text(row: dict | None, percent: bool) -> str:
    if row is None or row["mean"] is None:
        return "failed" if row and row["failed"] else "-"
    scale, digits = (100.0, 2) if percent else (1.0, 0)
    text = f"{row['mean'] * scale:.{digits}f}" + (f" ± {row['std'] * scale:.{digits}f}" if row["n"] > 1
                                                  else " (1 seed)")
    return text + (f" ({row['failed']} failed)" if row["failed"] else "")


def format_markdown(summary: dict) -> str:
    """The results as Markdown: one Table-1 style table per metric, then notes."""
    methods, variants, rows = summary["methods"], summary["variants"], summary["table"]
    index = {(r["method"], r["variant"], r["metric"]): r for r in rows}
    lines = [f"# Noise-robustness benchmark: {summary['dataset']} (version {summary['dataset_version']})", "",
             f"Seeds {', '.join(map(str, summary['seeds']))}; mean ± sample std over seeds. "
             f"Machine: {summary['machine']['description']}. Config: {summary.get('config_file') or 'method defaults'}"
             + (f", overrides {summary['overrides']}" if summary.get("overrides") else "") + "."]
    info = summary.get("dataset_info") or {}
    if info:
        prepared = info.get("prepare_config") or {}
        lines.append(f"Data: {info['num_train']} training / {info['num_test']} test samples; graphs "
                     f"{', '.join(info.get('graphs') or []) or 'none'}"
                     + (f"; prepared with source options {prepared.get('source')}" if prepared.get("source") else "")
                     + ".")
    lines.append("")
    lines += _protocol_notes(summary)
    for metric, (title, percent) in {**TABLE_METRICS, **CELL_FIELDS}.items():
        lines += [f"## {title}", "", "| Method | " + " | ".join(variants) + " |",
                  "| --- | " + " | ".join("---:" for _ in variants) + " |"]
        for method in methods:
            cells = [_cell_text(index.get((method, v, metric)), percent) for v in variants]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += verdict_markdown(summary.get("controls") or {}, index, variants)
    lines += diagnostics_markdown(summary["cells"], methods, variants)
    lines += _images_notes(summary["cells"], methods)
    lines += _branch_notes(summary["cells"])
    if summary["dataset"] == "synthetic":
        lines += [("The synthetic dataset checks the machinery and the methods; it is no measure of "
                   "real-world accuracy."), ""]
    if summary.get("command"):
        lines += [f"Command ({summary.get('jobs', 1)} cells at a time):", "", f"    {summary['command']}", ""]
    lines += _notes(summary.get("notes_file"))
    return "\n".join(lines)


def verdict(method_row: dict, control_rows: list[dict]) -> dict:
    """Does a method beat every control by more than the seed spread? Test-accuracy rows of aggregate().

    The spread of one comparison is the larger sample std (over seeds) of the two rows; a difference of
    the means above it counts as a win. Returns {"beats_all", "differences": [(control, diff, spread)]}.
    """
    differences = []
    for control in control_rows:
        spread = max(method_row["std"] or 0.0, control["std"] or 0.0)
        differences.append((control["method"], method_row["mean"] - control["mean"], spread))
    return {"beats_all": all(diff > spread for _, diff, spread in differences), "differences": differences}


def verdict_markdown(controls: dict, index: dict, variants) -> list[str]:
    """Per method and noise variant: its test-accuracy difference to each control (benchmark: controls:)."""
    if not controls:
        return []
    lines = ["## Against the controls (test accuracy, points)", "",
             "Each entry: the method's mean minus the control's mean, and in brackets the seed spread (the "
             "larger of the two rows' std); **yes** where the method beats every control by more than its spread.",
             "", "| Method | " + " | ".join(variants) + " |", "| --- | " + " | ".join("---" for _ in variants) + " |"]
    for method, rows in controls.items():
        cells = []
        for variant in variants:
            mine = index.get((method, variant, "test_accuracy"))
            others = [index.get((row, variant, "test_accuracy")) for row in rows]
            if mine is None or mine["mean"] is None or any(o is None or o["mean"] is None for o in others):
                cells.append("-")
                continue
            result = verdict(mine, others)
            parts = [f"{name} {diff * 100:+.1f} ({spread * 100:.1f})" for name, diff, spread in result["differences"]]
            cells.append(("**yes**: " if result["beats_all"] else "no: ") + ", ".join(parts))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def _notes(path: str | None) -> list[str]:
    """The hand-written notes file (benchmark: notes:), appended as is; a missing file is said so."""
    if not path:
        return []
    file = Path(path)
    if not file.is_absolute() and not file.is_file():
        file = Path(__file__).resolve().parents[2] / path
    if not file.is_file():
        return [f"(Notes file {path} not written yet.)", ""]
    return [f"<!-- appended from {path} -->", "", file.read_text().rstrip(), ""]


def _protocol_notes(summary: dict) -> list[str]:
    lines = [("Evaluation: every number is on the test split, which chooses nothing. A method with several "
              "evaluation branches (SOFT: student/teacher) is evaluated with the branch that scores best on the "
              "validation split (clean labels; the noise stage flips train labels only), or, without a "
              "validation split, with its configured branch.")]
    control = [m for m in summary["methods"] if "@images" in m]
    if control:
        lines.append(f"Equal images seen: {', '.join(control)} is the baseline trained for (1 + K) times the "
                     f"epochs, K the grouped methods' neighbours per centre, so it sees as many training images "
                     f"as they do; its schedule is the same shape, stretched. The other rows compare at equal "
                     f"epochs.")
    return lines + [""]


def _images_notes(cells: list[dict], methods) -> list[str]:
    parts = []
    for m in methods:
        done = [c for c in cells if c.get("status") == "done" and c["cell"]["method"] == m and "images_seen" in c]
        if done:
            parts.append(f"{m} {done[0]['epochs']} epochs / {done[0]['images_seen']:,} images")
    return [f"Training per cell: {'; '.join(parts)}.", ""] if parts else []


def _branch_notes(cells: list[dict]) -> list[str]:
    chosen = [c for c in cells if c.get("status") == "done" and c.get("branch")]
    if not chosen:
        return []
    lines = ["Evaluation branch chosen per cell (methods with several, e.g. SOFT's student/teacher):", ""]
    for c in sorted(chosen, key=lambda c: (c["cell"]["method"], c["cell"]["variant"], c["cell"]["seed"])):
        b = c["branch"]
        scores = ", ".join(f"{k} {v * 100:.2f}" for k, v in b["selection_accuracy"].items())
        how = f"accuracy on {b['selected_on']}: {scores}" if scores else b["selected_on"]
        lines.append(f"- {c['cell']['method']} {c['cell']['variant']} seed {c['cell']['seed']}: **{b['branch']}** "
                     f"({how})")
    return lines + [""]


def write_csv(rows: list[dict], path: Path) -> Path:
    """Long format: method, variant, metric, mean, std, n, failed, seeds, values (';'-separated)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "variant", "metric", "mean", "std", "n", "failed", "seeds", "values"])
        for r in rows:
            writer.writerow([r["method"], r["variant"], r["metric"],
                             "" if r["mean"] is None else f"{r['mean']:.6f}",
                             "" if r["std"] is None else f"{r['std']:.6f}", r["n"], r["failed"],
                             ";".join(map(str, r["seeds"])), ";".join(f"{v:.6f}" for v in r["values"])])
    return path


def write_plot(rows: list[dict], methods, variants, path: Path, subtitle: str = "") -> Path:
    """Grouped bars (variants on x, one bar per method) with std error bars, one panel per metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {(r["method"], r["variant"], r["metric"]): r for r in rows}
    fig, axes = plt.subplots(1, len(TABLE_METRICS), figsize=(5 * len(TABLE_METRICS), 4), squeeze=False)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(variants))
    for ax, (metric, (title, _)) in zip(axes[0], TABLE_METRICS.items()):
        for i, method in enumerate(methods):
            stats = [index.get((method, v, metric)) for v in variants]
            means = [100 * s["mean"] if s and s["mean"] is not None else np.nan for s in stats]
            stds = [100 * s["std"] if s and s["std"] is not None else 0.0 for s in stats]
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=method)
        ax.set_xticks(x, variants)
        ax.set_title(title.split(":")[0], fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if subtitle:
        fig.suptitle(subtitle, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
