"""Sections of the per-version report (pipeline.report.build): each reads its table(s) and returns HTML.

Every section takes a `pipeline.report.data.VersionData` and returns an HTML fragment; a missing table
gives a short note instead. Numbers shown are computed here from the tables themselves (for example
the realised noise transition matrix from label/clean_label, neighbour label agreement from the
graph's neighbours and the samples' clean labels), next to what the files' metadata records.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.contract.classes import AU_INTENSITY_NAMES, AU_PRESENCE_NAMES
from pipeline.contract.crops import INDEX_FILE, open_crops, read_valid_mask
from pipeline.contract.graphs import read_graph
from pipeline.contract.tables import (
    ACTION_UNITS,
    CROPS_DIR,
    FACE_STATUSES,
    FACES,
    GRAPHS_DIR,
    LABELS_DIR,
    LANDMARKS,
    QUARANTINE,
    read_metadata,
    read_table,
    vectors_to_numpy,
)
from pipeline.knn.similarity import pairwise_first_neighbour_overlap, similarity_spread
from pipeline.report import plots
from pipeline.report.data import VersionData, labels_lookup
from pipeline.stages import noise

CROPS_PER_CLASS = 4
CROP_SEED = 0
QUARANTINE_EXAMPLES = 3
DETAIL_CHARS = 160

# --- small HTML helpers ----------------------------------------------------------------------------


def fmt(value: object) -> str:
    """A value as short display text: thousands separators for ints, 4 significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """An HTML table; numbers are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    lines = []
    for row in rows:
        cells = "".join(
            f"<td class='num'>{escape(fmt(v))}</td>" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
            else f"<td>{escape(fmt(v))}</td>" for v in row)
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def image(uri: str, alt: str) -> str:
    return f"<img src=\"{uri}\" alt=\"{escape(alt)}\">"


def note(text: str) -> str:
    return f"<p class='note'>{escape(text)}</p>"


def absent(path_text: str) -> str:
    return note(f"Not available: {path_text} is absent from this version.")


def flatten(value: dict, prefix: str = "", depth: int = 3) -> list[tuple[str, object]]:
    """Nested dict -> [(dotted key, leaf value)] in insertion order; below `depth` levels values stay whole."""
    rows: list[tuple[str, object]] = []
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item and depth > 1:
            rows += flatten(item, name + ".", depth - 1)
        else:
            rows.append((name, item))
    return rows


# --- classes, exclusions, faces --------------------------------------------------------------------

def classes_section(data: VersionData) -> str:
    """Class histogram per split and the counts as a table."""
    splits = data.split_order()
    labels = data.samples["label"].to_numpy(np.int64)                                # -1: unlabelled
    split = data.samples["split"].to_numpy(object)
    counts = {s: np.bincount(labels[(split == s) & (labels >= 0)], minlength=len(data.classes))[:len(data.classes)]
              for s in splits}
    uri = plots.grouped_bars(counts, data.classes, "Samples per class and split", "samples")
    rows = [[name] + [int(counts[s][c]) for s in splits] for c, name in enumerate(data.classes)]
    return image(uri, "class histogram per split") + table(["class"] + splits, rows)


def exclusions_section(data: VersionData) -> str:
    """Inputs left out by design (exclusions) and inputs that could not be used (quarantine)."""
    exclusions = data.samples_metadata.get("exclusions") or {}
    parts = ["<h3>Exclusions</h3>"]
    if exclusions:
        parts.append(table(["reason", "count"], sorted(exclusions.items(), key=lambda kv: -kv[1])))
    else:
        parts.append(note("No input was excluded (samples.parquet records no exclusions)."))
    parts.append("<h3>Quarantine</h3>")
    path = data.directory / QUARANTINE
    if not path.is_file():
        return "\n".join(parts + [absent(QUARANTINE)])
    frame = read_table(path).to_pandas()
    if frame.empty:
        return "\n".join(parts + [note("No input was quarantined.")])
    groups = frame.groupby(["stage", "reason"], sort=False)
    counts = groups.size().sort_values(ascending=False, kind="stable")
    parts.append(f"<p>{len(frame):,} quarantined inputs.</p>")
    parts.append(image(plots.horizontal_bars([f"{s}: {r}" for s, r in counts.index], counts.tolist(),
                                             "Quarantine by stage and reason", "inputs"), "quarantine counts"))
    parts.append(table(["stage", "reason", "count"], [(s, r, int(n)) for (s, r), n in counts.items()]))
    for (stage, reason), n in counts.items():
        rows = groups.get_group((stage, reason)).head(QUARANTINE_EXAMPLES)
        parts.append(f"<h4>{escape(stage)}: {escape(reason)} <span class='muted'>(first {len(rows)} of {n:,})</span></h4>")
        parts.append(table(["relpath", "sample_id", "detail"], [
            (r.relpath, None if r.sample_id != r.sample_id or r.sample_id is None else int(r.sample_id),
             str(r.detail or "")[:DETAIL_CHARS]) for r in rows.itertuples()]))
    return "\n".join(parts)


def faces_section(data: VersionData) -> str:
    """Detection status counts (ok | no_face | multi_face | unreadable) and detectors used."""
    path = data.directory / FACES
    if not path.is_file():
        return absent(FACES)
    faces = read_table(path)
    statuses = {row["values"]: row["counts"] for row in pc.value_counts(faces.column("status")).to_pylist()}
    order = [s for s in FACE_STATUSES] + sorted(s for s in statuses if s not in FACE_STATUSES)
    counts = [int(statuses.get(s, 0)) for s in order]
    parts = [image(plots.horizontal_bars(order, counts, "Face detection status", "samples"), "face status counts"),
             table(["status", "samples", "share"], [(s, n, n / max(faces.num_rows, 1)) for s, n in zip(order, counts)])]
    if "detector" in faces.column_names:
        detectors = {r["values"]: r["counts"] for r in pc.value_counts(faces.column("detector")).to_pylist()}
        parts.append(table(["detector", "samples"], sorted(detectors.items())))
    return "\n".join(parts)


# --- crops with landmarks --------------------------------------------------------------------------

def landmarks_of(path: Path, sample_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """{sample_id: [P, 2] points} for the given ids that have finite landmarks; reads only those rows."""
    if not path.is_file() or not len(sample_ids):
        return {}
    wanted = [int(i) for i in sample_ids]
    found = pq.read_table(path, columns=["sample_id", "points"], filters=[("sample_id", "in", wanted)])
    points = vectors_to_numpy(found.column("points"))               # [M, 2P] x,y interleaved, NaN rows absent
    return {int(i): p.reshape(-1, 2) for i, p in zip(found.column("sample_id").to_pylist(), points)
            if np.isfinite(p).all()}


def _pick_crops(data: VersionData, valid: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(class name, chosen sample ids) per class with valid crops: CROPS_PER_CLASS each, seeded."""
    rng = np.random.default_rng(CROP_SEED)
    ids = data.samples["sample_id"].to_numpy(np.int64)
    labels = data.samples["label"].to_numpy(np.int64)
    usable = (ids < len(valid)) & valid[np.clip(ids, 0, max(len(valid) - 1, 0))]
    picks = []
    for c, name in enumerate(data.classes):
        candidates = np.sort(ids[usable & (labels == c)])
        if len(candidates):
            picks.append((name, np.sort(rng.choice(candidates, min(CROPS_PER_CLASS, len(candidates)), replace=False))))
    return picks


def crops_section(data: VersionData) -> str:
    """A grid of aligned crops, CROPS_PER_CLASS per class picked with CROP_SEED, landmarks drawn on top."""
    crop_dir = data.directory / CROPS_DIR
    if not (crop_dir / INDEX_FILE).is_file():
        return absent(f"{CROPS_DIR}/")
    crops = open_crops(crop_dir)                                     # [N, S, S, 3] uint8, row = sample_id
    valid = read_valid_mask(crop_dir)
    picks = _pick_crops(data, valid)
    if not picks:
        return note("The crop store holds no valid crop.")
    landmarks_path = data.directory / LANDMARKS
    landmarks = landmarks_of(landmarks_path, np.concatenate([chosen for _, chosen in picks]))
    rows = [[np.asarray(crops[i]) for i in chosen] for _, chosen in picks]
    points = [[landmarks.get(int(i)) for i in chosen] for _, chosen in picks]
    shown = sum(len(chosen) for _, chosen in picks)
    text = (f"<p>{int(valid.sum()):,} valid crops of {len(valid):,} ({crops.shape[1]}x{crops.shape[2]}); "
            f"{len(landmarks)} of the {shown} shown have landmarks"
            f"{'' if landmarks_path.is_file() else ' (landmarks.parquet is absent)'}. Picked with seed {CROP_SEED}.</p>")
    grid = plots.crop_grid(rows, points, [name for name, _ in picks], CROPS_PER_CLASS)
    return text + image(grid, "aligned crops with landmarks")


# --- action units ----------------------------------------------------------------------------------

def action_units_section(data: VersionData) -> str:
    """Per-AU intensity distribution, per-class mean intensity and presence rate."""
    path = data.directory / ACTION_UNITS
    if not path.is_file():
        return absent(ACTION_UNITS)
    table_ = read_table(path)
    intensity = vectors_to_numpy(table_.column("intensity"))       # [N, 17] float32, NaN rows absent
    rows_ok = np.isfinite(intensity).all(axis=1)
    labels = data.labels_of(table_.column("sample_id").to_numpy())
    backends = ({r["values"]: r["counts"] for r in pc.value_counts(table_.column("backend")).to_pylist()}
                if "backend" in table_.column_names else {})
    backend_text = ", ".join(f"{b} ({n:,})" for b, n in backends.items()) or "unknown"
    parts = [f"<p>{int(rows_ok.sum()):,} samples with AU estimates; backend: {escape(backend_text)}.</p>"]
    au_names = AU_INTENSITY_NAMES if intensity.shape[1] == len(AU_INTENSITY_NAMES) else \
        [f"#{i}" for i in range(intensity.shape[1])]
    if not rows_ok.any():
        return parts[0] + note("No sample has a finite AU estimate.")
    parts.append(image(plots.box_plot(intensity[rows_ok], au_names, "AU intensity (0-5)", "intensity"),
                       "AU intensity distribution"))
    means = np.full((len(data.classes), intensity.shape[1]), np.nan)
    for c in range(len(data.classes)):
        members = rows_ok & (labels == c)
        if members.any():
            means[c] = intensity[members].mean(axis=0)
    parts.append(image(plots.heatmap(means, data.classes, au_names, "Mean AU intensity per class",
                                     value_format="{:.1f}", vmin=0.0), "mean AU intensity per class"))
    if "presence" in table_.column_names:
        presence = vectors_to_numpy(table_.column("presence"))[rows_ok]   # [N, 18]
        names = AU_PRESENCE_NAMES if presence.shape[1] == len(AU_PRESENCE_NAMES) else \
            [f"#{i}" for i in range(presence.shape[1])]
        share = (presence > 0.5).mean(axis=0)                            # [18] share of samples with the AU present
        parts.append(image(plots.grouped_bars({"present": share}, names, "AU presence rate", "share of samples",
                                              value_format="{:.2f}"), "AU presence rate"))
    return "\n".join(parts)


# --- noisy-label variants --------------------------------------------------------------------------

SEED_SUFFIX = re.compile(r"-s\d+$")
MATRIX_KEYS = ("given_transition",)     # pipeline/stages/noise.py: the user-given matrix of a 'trans' variant


def realised_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] share of clean class i (row) labelled j (column); NaN rows for classes without samples."""
    counts, matrix = noise.realised_transition(clean, noisy, num_classes)
    return np.where(counts.sum(axis=1, keepdims=True) > 0, matrix, np.nan)


def _variant_stats(data: VersionData, path: Path, split_of: np.ndarray) -> dict:
    """Realised numbers of one labels/<variant>.parquet over its train rows, next to its metadata."""
    frame = read_table(path, ["sample_id", "label", "clean_label"]).to_pandas()
    metadata = read_metadata(path)
    ids = frame["sample_id"].to_numpy(np.int64)
    inside = ids < len(split_of)
    train = inside & (split_of[np.where(inside, ids, 0)] == "train")                  # [N] bool
    clean, noisy = frame["clean_label"].to_numpy(np.int64), frame["label"].to_numpy(np.int64)
    size = max(len(data.classes), int(max(clean.max(initial=0), noisy.max(initial=0))) + 1)
    realised = realised_matrix(clean[train], noisy[train], size)
    stored = metadata.get("realised_transition")
    diff = None
    if isinstance(stored, list) and np.shape(stored) == realised.shape:
        diff = float(np.nanmax(np.abs(np.asarray(stored, dtype=np.float64) - np.nan_to_num(realised))))
    flipped = clean != noisy
    return {"name": path.stem, "metadata": metadata, "size": size, "realised": realised,
            "n_train": int(train.sum()), "n_flipped": int(flipped[train].sum()),
            "rate": float(flipped[train].mean()) if train.any() else float("nan"),
            "outside": int((flipped & ~train).sum()), "matrix_diff": diff}


def _variant_block(stats: dict, names: list[str]) -> str:
    """Heatmaps (realised, and any given matrix) and the metadata of one variant."""
    name, rate = stats["name"], stats["rate"]
    heat = {"vmin": 0.0, "vmax": 1.0, "xlabel": "label in the file", "ylabel": "clean label", "cmap": "Blues"}
    uris = [plots.heatmap(stats["realised"], names, names, f"{name}: realised (rate {rate:.4f})", **heat)]
    for key in MATRIX_KEYS:
        value = stats["metadata"].get(key)
        if isinstance(value, list) and np.shape(value) == stats["realised"].shape:
            uris.append(plots.heatmap(np.asarray(value, dtype=np.float64), names, names, f"{name}: {key}", **heat))
    check = ("no realised matrix in the metadata" if stats["matrix_diff"] is None else
             f"the metadata's realised_transition {'agrees' if stats['matrix_diff'] < 1e-5 else 'DIFFERS'} "
             f"(max |difference| {stats['matrix_diff']:.2g})")
    return (f"<h3>{escape(name)}</h3><p>{stats['n_train']:,} train rows, {stats['n_flipped']:,} flipped: realised "
            f"noise rate <b>{rate:.4f}</b>; flipped rows outside the train split: {stats['outside']}; {check}.</p>"
            f"<div class='row'>{''.join(f'<div>{image(u, name)}</div>' for u in uris)}</div>"
            f"<details><summary>metadata of {escape(name)}.parquet</summary>"
            f"{table(['key', 'value'], flatten(stats['metadata']))}</details>")


def noise_section(data: VersionData) -> str:
    """Per variant: realised rate and transition matrix over the train rows, next to the file's metadata.

    All variants are listed in the table; heatmaps are drawn for the first seed of each kind and rate
    (seeds differ only in which samples flip) and skipped for variants without flips.
    """
    directory = data.directory / LABELS_DIR
    paths = sorted(directory.glob("*.parquet"), key=lambda p: (p.stem != "clean", p.stem)) if directory.is_dir() else []
    if not paths:
        return absent(f"{LABELS_DIR}/*.parquet")
    split_of = data.split_by_id()
    all_stats = [_variant_stats(data, path, split_of) for path in paths]
    rows = [[st["name"], st["metadata"].get("kind"), st["metadata"].get("rate"), st["n_train"], st["n_flipped"],
             st["rate"], st["metadata"].get("realised_rate"), st["outside"]] for st in all_stats]
    summary = table(["variant", "kind", "nominal rate", "train rows", "flipped", "realised rate",
                     "realised rate (metadata)", "flipped outside train"], rows)
    drawn, blocks = set(), []
    for stats in all_stats:
        stem = SEED_SUFFIX.sub("", stats["name"])
        if stats["n_flipped"] == 0 or stem in drawn:
            continue
        drawn.add(stem)
        names = list(data.classes) + [str(i) for i in range(len(data.classes), stats["size"])]
        blocks.append(_variant_block(stats, names))
    return (f"<p>{len(paths)} variants. Realised rate and matrices are counted here from label/clean_label over "
            "the train split (row = clean class, column = label in the file). Heatmaps: first seed of each "
            "kind and rate.</p>" + summary + "<div class='grid'>" + "\n".join(f"<div>{b}</div>" for b in blocks)
            + "</div>")


# --- neighbour graphs ------------------------------------------------------------------------------

GRAPH_KEYS = {            # column -> metadata keys written by pipeline/stages/graphs.py (older spellings after)
    "K": ("K", "k"), "metric": ("metric",), "sigma": ("sigma",), "sigma mode": ("sigma_mode",),
    "backend": ("backend",), "recall@K": ("recall_at_k", "recall"),
    "recall queries": ("recall_queries",), "agreement (metadata)": ("label_agreement",),
}


def _meta_value(metadata: dict, names: Sequence[str]) -> object:
    for name in names:
        if name in metadata:
            value = metadata[name]
            return value.get("overall") if isinstance(value, dict) else value
    return None


def neighbour_agreement(labels_by_id: np.ndarray, sample_ids: np.ndarray, neighbors: np.ndarray,
                        num_classes: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Share of neighbours ([N, K] sample ids) with the row's clean label.

    Returns (overall, per class [C] (NaN for absent classes), class shares [C] of the graph's rows: the
    agreement random neighbours would give per class).
    """
    own = labels_lookup(labels_by_id, sample_ids)                                     # [N]
    same = (labels_lookup(labels_by_id, neighbors) == own[:, None]) & (own[:, None] >= 0)  # [N, K] bool
    known = own >= 0
    overall = float(same[known].mean()) if known.any() else float("nan")
    per_class = np.array([same[own == c].mean() if (own == c).any() else np.nan for c in range(num_classes)])
    shares = np.bincount(own[known], minlength=num_classes)[:num_classes] / max(int(known.sum()), 1)
    return overall, per_class, shares


def graphs_section(data: VersionData) -> str:
    """Per graph: parameters, measured recall, neighbour label agreement (overall and per class)."""
    directory = data.directory / GRAPHS_DIR
    paths = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not paths:
        return absent(f"{GRAPHS_DIR}/*.parquet")
    labels = data.labels_by_id()
    rows, per_class, details, shares, graphs = [], {}, [], None, {}
    for path in paths:
        graph = read_graph(path)
        space = str(graph.metadata.get("space", path.stem))
        graphs[space] = graph
        overall, per_class[space], shares = neighbour_agreement(labels, graph.sample_id, graph.neighbors,
                                                                len(data.classes))
        spread = similarity_spread(graph.similarity)
        rows.append([space, len(graph.sample_id)] + [_meta_value(graph.metadata, keys) for keys in GRAPH_KEYS.values()]
                    + [overall, float(np.sum(shares ** 2)), spread["median"], spread["p10"], spread["p90"]])
        details.append(f"<details><summary>metadata of {escape(path.name)}</summary>"
                       f"{table(['key', 'value'], flatten(graph.metadata))}</details>")
    header = ["space", "rows"] + list(GRAPH_KEYS) + ["agreement (computed)", "chance", "a_ij median", "a_ij p10",
                                                     "a_ij p90"]
    overlaps = table(["graph", "graph", "same first neighbour", "rows compared"],
                     [list(pair) for pair in pairwise_first_neighbour_overlap(graphs)])
    chart = plots.grouped_bars(per_class, data.classes, "Neighbour label agreement per class", "share of neighbours",
                               value_format="{:.2f}", reference=shares,
                               reference_label=f"class share ({space} rows)")
    return (table(header, rows) + "<p class='muted'>Agreement: share of a row's K neighbours with the same clean "
            "label (samples.parquet), computed here from the neighbours; chance: what random neighbours would "
            "give (sum of squared class shares). Dashed lines: each class's share of the rows, its chance level. "
            "a_ij: median and 10th/90th percentiles of the similarities (near 1 or 0 everywhere, they carry no "
            "information). Below: the share of rows whose first neighbour is the same in two graphs.</p>"
            + overlaps + image(chart, "neighbour label agreement per class") + "".join(details))
