"""Plots for the per-version report, each returned as a `data:image/png;base64,...` URI.

Figures are made with matplotlib's object API on the Agg canvas (no pyplot state), so plots can be
drawn from several threads at once (Prefect runs tasks in threads). PNGs carry no software/version
metadata, so the same data gives the same bytes.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"}
OTHER_COLOURS = ("#8172b3", "#c44e52", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
DPI = 100
MAX_FLIER_ROWS = 20_000
# iBUG 68-point contours (jaw, brows, nose bridge, nostrils, eyes, outer and inner lips); closed ones loop.
IBUG68_CONTOURS = ((range(17), False), (range(17, 22), False), (range(22, 27), False), (range(27, 31), False),
                   (range(31, 36), False), (range(36, 42), True), (range(42, 48), True), (range(48, 60), True),
                   (range(60, 68), True))


def new_figure(width: float, height: float) -> Figure:
    """A figure (size in inches) attached to an Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_data_uri(fig: Figure) -> str:
    """Render `fig` to PNG and return it as a data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _colour(name: str, index: int) -> str:
    return SPLIT_COLOURS.get(name, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def grouped_bars(groups: Mapping[str, Sequence[float]], categories: Sequence[str], title: str,
                 ylabel: str, value_format: str = "{:.0f}", reference: Sequence[float] | None = None,
                 reference_label: str = "") -> str:
    """One bar per (category, group), groups side by side; values written above the bars.

    `reference` ([len(categories)]) draws a short black line per category (e.g. a chance level).
    """
    n_groups, n_cats = max(len(groups), 1), len(categories)
    fig = new_figure(max(6.0, n_cats * (0.35 + 0.3 * n_groups)), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / n_groups
    x = np.arange(n_cats)
    for i, (name, values) in enumerate(groups.items()):
        offsets = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(offsets, values, width, label=name, color=_colour(name, i))
        if n_cats * n_groups <= 40:
            ax.bar_label(bars, labels=[value_format.format(v) for v in values], fontsize=7, padding=1)
    if reference is not None:
        ax.hlines(reference, x - 0.45, x + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  label=reference_label)
    ax.set_xticks(x, categories, rotation=30 if n_cats > 6 else 0, ha="right" if n_cats > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    if len(groups) > 1 or reference is not None:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return to_data_uri(fig)


def horizontal_bars(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str) -> str:
    """Horizontal bars, one per label, largest first as given; counts written at the bar ends."""
    fig = new_figure(7.0, 1.1 + 0.3 * len(labels))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    bars = ax.barh(y, values, height=0.6, color=OTHER_COLOURS[0])
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.bar_label(bars, labels=[f"{v:,.0f}" if float(v).is_integer() else f"{v:.3g}" for v in values], fontsize=8,
                 padding=2)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.12)
    ax.spines[["top", "right"]].set_visible(False)
    return to_data_uri(fig)


def crop_grid(crops: Sequence[Sequence[np.ndarray]], points: Sequence[Sequence[np.ndarray | None]],
              row_titles: Sequence[str], columns: int, cell: int = 160, gap: int = 4, margin: int = 110) -> str:
    """A mosaic of crops ([S, S, 3] uint8), one row per title, landmarks ([P, 2] crop pixels or None) drawn.

    Composed directly in pixels (OpenCV resize and anti-aliased lines, PIL text), not through matplotlib:
    a few dozen photos are far faster and smaller this way.
    """
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    height = len(crops) * (cell + gap) + gap
    canvas = np.full((height, margin + columns * (cell + gap), 3), 255, dtype=np.uint8)   # [H, W, 3]
    for r, row in enumerate(crops):
        top = gap + r * (cell + gap)
        for c, crop in enumerate(row[:columns]):
            left = margin + c * (cell + gap)
            canvas[top:top + cell, left:left + cell] = draw_crop(crop, points[r][c], cell)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 15)
    for r, title in enumerate(row_titles):
        draw.text((margin - 10, gap + r * (cell + gap) + cell // 2), title, fill=(30, 30, 30), font=font, anchor="rm")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def draw_crop(crop: np.ndarray, points: np.ndarray | None, cell: int) -> np.ndarray:
    """Resize one crop to [cell, cell, 3] and draw its landmarks: dots, and the iBUG contours for 68 points."""
    import cv2

    scale = cell / crop.shape[0]
    image = cv2.resize(np.ascontiguousarray(crop), (cell, cell), interpolation=cv2.INTER_AREA)
    if points is None or not np.isfinite(points).all():
        return image
    pts = (points + 0.5) * scale - 0.5                                   # [P, 2] in cell pixels
    fixed = np.round(pts * 16).astype(np.int32)                          # 4 fractional bits for sub-pixel drawing
    if len(points) == 68:
        for indices, closed in IBUG68_CONTOURS:
            cv2.polylines(image, [fixed[list(indices)]], closed, (57, 255, 20), 1, cv2.LINE_AA, shift=4)
    for x, y in fixed:
        cv2.circle(image, (int(x), int(y)), 12, (255, 255, 51), -1, cv2.LINE_AA, shift=4)
    return image


def box_plot(values: np.ndarray, names: Sequence[str], title: str, ylabel: str) -> str:
    """One box per column of `values` [N, D] (NaNs ignored); outliers drawn up to MAX_FLIER_ROWS rows."""
    columns = [v[np.isfinite(v)] for v in np.asarray(values, dtype=np.float64).T]
    fig = new_figure(max(6.0, 0.45 * len(names)), 3.2)
    ax = fig.add_subplot()
    few = max((len(c) for c in columns), default=0) <= MAX_FLIER_ROWS        # outlier dots only for small sets
    ax.boxplot(columns, tick_labels=list(names), widths=0.6, showfliers=few,
               flierprops={"markersize": 2, "alpha": 0.4},
               medianprops={"color": "#c44e52"})
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return to_data_uri(fig)


def heatmap(matrix: np.ndarray, row_names: Sequence[str], col_names: Sequence[str], title: str,
            value_format: str = "{:.2f}", vmin: float | None = None, vmax: float | None = None,
            xlabel: str = "", ylabel: str = "", cmap: str = "viridis") -> str:
    """Annotated heatmap of a [R, C] matrix (NaN cells left blank)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    fig = new_figure(max(3.6, 0.5 * cols + 1.8), max(2.8, 0.4 * rows + 1.4))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    font = 7 if cols <= 20 else 6
    for (r, c), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(c, r, "0" if value == 0 else value_format.format(value), ha="center", va="center",
                    fontsize=font, color="white" if dark else "black")
    ax.set_xticks(range(cols), col_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(rows), row_names, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    return to_data_uri(fig)
