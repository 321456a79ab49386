"""report.html of an audit: self-contained (every image a data URI), readable offline.

Sections: what was audited and how (weights of the combination, the cleaned variants to train on); the
per-signal numbers (AUROC and precision@n_flipped where the flips are known, else flagged counts); a gallery
of the most suspect faces (crop, given and suggested label, the true label where known, and each graph
space's nearest neighbours with their given labels); score histograms per signal (split by flipped / not
where known); precision-recall curves per signal where the flips are known.
"""
from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.contract.atomic import write_text
from pipeline.contract.classes import class_names

log = logging.getLogger(__name__)

STYLE = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ccc;border-radius:6px;padding:6px;width:300px;
font-size:12px}.card.flip{border-color:#c0392b;border-width:2px}.main{display:flex;gap:8px}.nb{display:flex;gap:3px;
margin-top:4px;align-items:flex-start}.nb figure{margin:0;text-align:center;font-size:10px;width:52px}
.space{font-size:10px;color:#666;width:60px}.bad{color:#c0392b}.ok{color:#1e8449}code{font-size:12px}"""


def _png(array: np.ndarray, side: int) -> str:
    """An image [H, W, 3] uint8 as a PNG data URI, resized to side x side."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).resize((side, side), Image.BILINEAR).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _subplots(count: int, width: float = 3.6, height: float = 2.6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, max(1, count))
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


def histograms(scores: dict, flipped: np.ndarray | None) -> str:
    """One histogram per signal; flipped and not-flipped faces apart when the flips are known."""
    fig, axes = _subplots(len(scores))
    for ax, (name, score) in zip(axes, scores.items()):
        bins = np.linspace(float(np.min(score)), float(np.max(score)) + 1e-9, 30)
        if flipped is not None:
            ax.hist(score[~flipped], bins=bins, alpha=0.6, label="label kept", color="#2e86c1")
            ax.hist(score[flipped], bins=bins, alpha=0.6, label="label flipped", color="#c0392b")
            ax.legend(fontsize=7)
        else:
            ax.hist(score, bins=bins, color="#2e86c1")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _figure_uri(fig)


def pr_curves(scores: dict, flipped: np.ndarray) -> str:
    """Precision-recall curves of every signal against the known flips, on one plot."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(9.5, 5.0))
    colours = plt.get_cmap("tab20").colors
    for index, (name, score) in enumerate(scores.items()):
        precision, recall, _ = precision_recall_curve(flipped, score)
        label_signal = name in ("combined", "cleanlab") or name.startswith("neighbours")
        ax.plot(recall, precision, lw=2.6 if name == "combined" else 1.3, label=name,
                color="black" if name == "combined" else colours[index % len(colours)],
                ls="-" if label_signal else ":")
    ax.axhline(flipped.mean(), color="#888", lw=0.8, ls="--", label="share flipped")
    ax.set_xlabel("recall (flipped labels found)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _figure_uri(fig)


def _label(names, value: int, cls: str = "") -> str:
    return f'<span class="{cls}">{html.escape(names[int(value)])}</span>'


def gallery(version, train, signals, views, config, truth: bool) -> str:
    """Cards of the `config.gallery` most suspect faces, with each graph space's nearest neighbours."""
    names = class_names(version.num_classes)
    order = np.argsort(-signals.scores["combined"], kind="stable")[:config.gallery]
    cards = []
    for rank, i in enumerate(order, 1):
        sid, given, suggested = int(train.sample_id[i]), int(train.label[i]), int(signals.suggested[i])
        flipped = truth and bool(train.flipped[i])
        lines = [f"<b>#{rank}</b> sample {sid}", f"given {_label(names, given, 'bad' if flipped else '')}",
                 f"suggested {_label(names, suggested)}"]
        if truth:
            lines.append(f"true {_label(names, train.clean_label[i], 'ok')}" + (" (flipped)" if flipped else ""))
        flag = " &middot; flagged" if signals.flags["combined"][i] else ""
        lines.append(f"score {signals.scores['combined'][i]:.3f}{flag}")
        rows = []
        for view in views:
            figures = []
            for j in view.neighbours[i][view.neighbours[i] >= 0][:config.neighbours_shown]:
                figures.append(f'<figure><img src="{_png(version.crops[train.sample_id[j]], 48)}" alt="neighbour">'
                               f'<figcaption>{html.escape(names[int(train.label[j])])}</figcaption></figure>')
            rows.append(f'<div class="nb"><div class="space">{html.escape(view.space)}</div>{"".join(figures)}</div>')
        cards.append(f'<div class="card{" flip" if flipped else ""}"><div class="main">'
                     f'<img src="{_png(version.crops[sid], 96)}" alt="face {sid}"><div>{"<br>".join(lines)}</div>'
                     f'</div>{"".join(rows)}</div>')
    return f'<div class="grid">{"".join(cards)}</div>'


def _share(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"     # NaN (nothing flagged): no precision


def signal_table(summary: dict) -> str:
    truth = summary["truth_known"]
    head = ["signal", "AUROC", f"precision@{summary['n_flipped']}", "flagged", "flag precision", "flag recall"] \
        if truth else ["signal", "flagged"]
    rows = []
    for name, m in summary["signals"].items():
        cells = [name] + ([f"{m['auroc']:.3f}", f"{m['precision_at_n_flipped']:.3f}", m["flagged"],
                           _share(m["flag_precision"]), _share(m["flag_recall"])] if truth else [m["flagged"]])
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table>")


def write_report(directory: Path, version, train, signals, summary: dict, config, views) -> Path:
    """Write <directory>/report.html; returns its path."""
    truth = summary["truth_known"]
    weights = ", ".join(f"{html.escape(k)} {v:.2f}" for k, v in summary["weights"].items())
    cleaned = "".join(f"<li>{part}: <code>make train DATASET={html.escape(summary['dataset'])} "
                      f"NOISE={html.escape(name)}</code></li>" for part, name in summary["cleaned_variants"].items())
    skipped = "".join(f"<li>{html.escape(line)}</li>" for line in summary["skipped"])
    if not summary["graphs"]:
        skipped += "<li>the version has no graphs: neighbour, outlier and near-duplicate signals skipped</li>"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>label audit {summary['audit_hash']}</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Label audit of {html.escape(summary['dataset'])} version {summary['version']}, variant "
        f"{html.escape(summary['variant'])}</h1>",
        f"<p>audit {summary['audit_hash']}: {summary['n']} training faces, {summary['folds']}-fold out-of-fold "
        f"probabilities, graphs {html.escape(', '.join(summary['graphs']) or 'none')}. Flagged "
        f"<b>{summary['flagged']}</b> labels" + (f"; the variant has {summary['n_flipped']} flipped labels "
                                                 f"(known)" if truth else "") + ".</p>",
        f"<p>Combined score: the reliability-weighted mean of the label sources (weights: {weights}); "
        f"see training/audit/signals.py.</p><ul>{cleaned}</ul>" + (f"<ul>{skipped}</ul>" if skipped else ""),
        "<h2>Signals</h2>", signal_table(summary),
        f"<h2>The {config.gallery} most suspect faces</h2><p>Each card: the face, its given, suggested"
        + (" and true" if truth else "") + " label; below, its nearest neighbours in each graph space with their "
        "given labels." + (" A red frame marks a label that was flipped." if truth else "") + "</p>",
        gallery(version, train, signals, [v for v in views], config, truth),
        "<h2>Score histograms</h2>",
        f'<img src="{histograms(signals.scores, train.flipped if truth else None)}" alt="score histograms">',
    ]
    if truth:
        parts += ["<h2>Precision-recall against the known flips</h2>",
                  f'<img src="{pr_curves(signals.scores, train.flipped)}" alt="precision-recall curves">']
    parts.append("</body></html>")
    path = directory / "report.html"
    return write_text(path, "\n".join(parts))
