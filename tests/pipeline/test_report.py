"""The per-version report: self-contained HTML, every section drawn, numbers matching the tables."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.contract.classes import CLASSES_7
from pipeline.contract.crops import create_crop_store, write_valid_mask
from pipeline.contract.graphs import graph_table
from pipeline.contract.tables import QuarantineRow, quarantine_table, samples_schema, vectors_to_arrow, write_table
from pipeline.report.build import REPORT_FILE, build_report, report_sections
from pipeline.report.sections import neighbour_agreement
from pipeline.stages.graphs import label_agreement
from pipeline.stages.noise import make_noisy_labels, write_noisy_labels

N = 40
SPLITS = ["train"] * 28 + ["val"] * 6 + ["test"] * 6
LABELS = np.arange(N) % 7                                 # [N] canonical labels, every class in every split
FACE_STATUS = ["ok"] * 34 + ["no_face"] * 3 + ["multi_face"] * 2 + ["unreadable"]
CROP = 96
K = 3
IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _drawn_face(label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A hand-drawn stand-in for an aligned crop (a fake, not a face model): an ellipse and 68 points on it."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:] = (40 + 25 * label, 90, 160 - 15 * label)
    inside = ((xx - size / 2) / (0.32 * size)) ** 2 + ((yy - size / 2) / (0.42 * size)) ** 2 <= 1
    image[inside] = (230, 190, 160)
    angle = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    points = np.stack([size / 2 + 0.3 * size * np.cos(angle), size / 2 + 0.4 * size * np.sin(angle)], 1)
    return image, points.astype(np.float32)                # [S, S, 3] uint8, [68, 2]


def _write_samples(out: Path) -> None:
    schema = samples_schema(7, with_va=False, with_votes=False, with_given_box=False)
    samples = pa.table({
        "sample_id": np.arange(N, dtype=np.int64), "split": SPLITS, "relpath": [f"img/{i:03d}.png" for i in range(N)],
        "content_hash": [f"{i:016x}" for i in range(N)], "label": LABELS.astype(np.int8),
        "source_label": [CLASSES_7[c] for c in LABELS], "width": np.full(N, 256, np.int32),
        "height": np.full(N, 256, np.int32)}, schema=schema)
    write_table(out / "samples.parquet", samples, {"dataset": "tiny", "classes": list(CLASSES_7),
                                                   "exclusions": {"contempt_outside_7_class_view": 5, "uncertain": 2}})


def _write_faces_crops_landmarks(out: Path) -> np.ndarray:
    rows = [QuarantineRow(f"img/{i:03d}.png", "faces", FACE_STATUS[i], f"detector said {FACE_STATUS[i]}", i)
            for i in range(N) if FACE_STATUS[i] != "ok"]
    rows += [QuarantineRow("img/broken.png", "sources", "unreadable_image", "cannot identify image file", None)]
    write_table(out / "quarantine.parquet", quarantine_table(rows))
    write_table(out / "faces.parquet", pa.table({
        "sample_id": np.arange(N, dtype=np.int64), "status": FACE_STATUS,
        "score": np.linspace(0.6, 1.0, N).astype(np.float32), "detector": ["dlib-hog"] * N}))
    ok = np.array([s == "ok" for s in FACE_STATUS])
    crops = create_crop_store(out / "crops", N, CROP)      # [N, S, S, 3] uint8
    points = np.zeros((N, 68, 2), np.float32)
    for i in np.flatnonzero(ok):
        crops[i], points[i] = _drawn_face(int(LABELS[i]), CROP)
    crops.flush()
    write_valid_mask(out / "crops", ok)
    ids = np.flatnonzero(ok)
    write_table(out / "landmarks.parquet", pa.table({
        "sample_id": ids.astype(np.int64), "points": vectors_to_arrow(points[ids].reshape(len(ids), 136)),
        "n_points": np.full(len(ids), 68, np.int32), "backend": ["dlib"] * len(ids),
        "score": np.ones(len(ids), np.float32)}))
    return ids


def _write_aus_labels_graph(out: Path, ids: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    intensity = np.clip(rng.normal(LABELS[ids, None] * 0.5, 0.4, (len(ids), 17)), 0, 5).astype(np.float32)
    presence = (rng.random((len(ids), 18)) < 0.4).astype(np.float32)
    write_table(out / "action_units.parquet", pa.table({
        "sample_id": ids.astype(np.int64), "intensity": vectors_to_arrow(intensity),
        "presence": vectors_to_arrow(presence), "backend": ["estimate"] * len(ids)}))
    samples = pa.table({"sample_id": np.arange(N, dtype=np.int64), "split": SPLITS, "label": LABELS})
    table, info = make_noisy_labels(samples, "sym-0.25", 7)                   # exactly round(0.25 * 28) flips
    write_noisy_labels(out / "labels", table, info)
    distance = np.linalg.norm(intensity[:, None] - intensity[None], axis=-1)   # [n, n] exact distances
    np.fill_diagonal(distance, np.inf)
    order = np.argsort(distance, axis=1, kind="stable")[:, :K]                 # [n, K] row positions
    dist = np.take_along_axis(distance, order, 1)
    write_table(out / "graphs" / "au.parquet",
                graph_table(ids, ids[order], dist, np.exp(-dist ** 2 / 2)),
                {"space": "au", "K": K, "metric": "euclidean", "sigma": 1.0, "sigma_mode": "config",
                 "backend": "exact", "recall_at_k": 1.0, "recall_queries": len(ids),
                 "label_agreement": label_agreement(order, LABELS[ids])})


SUMMARY = {"seconds": {"sources": 1.25, "per_image": 3.5}, "computed": {"faces": 40, "landmarks": 0}}


@pytest.fixture(scope="module")
def tiny_version(tmp_path_factory) -> Path:
    """A hand-built version directory of 40 samples with every DESIGN table (built once per module)."""
    out = tmp_path_factory.mktemp("tiny") / "v0123abcd"
    _write_samples(out)
    ids = _write_faces_crops_landmarks(out)
    _write_aus_labels_graph(out, ids)
    return out


@pytest.fixture(scope="module")
def tiny_report(tiny_version) -> str:
    """report.html of the tiny version, rendered once with a run summary."""
    path = build_report(tiny_version, SUMMARY)
    assert path == tiny_version / REPORT_FILE
    return path.read_text()


def _images(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in IMG_RE.findall(html)]


def _row(*cells: str) -> str:
    return "".join(f"<td class='num'>{c}</td>" if re.fullmatch(r"[\d.,]+", c) else f"<td>{c}</td>" for c in cells)


def test_full_report_is_self_contained_with_every_section(tiny_report):
    html = tiny_report
    assert "http://" not in html and "https://" not in html and 'src="file' not in html and "<script" not in html
    assert "<link" not in html and "url(" not in html
    for _, title, _ in report_sections():
        assert f"<h2>{title}</h2>" in html
    assert "Not available" not in html and "could not be drawn" not in html
    # classes, quarantine, faces, crop grid, AU box + heatmap + presence, noise realised, graph agreement
    images = _images(html)
    assert len(images) == len(re.findall(r"<img ", html)) == 9
    for picture in images:
        assert picture.format == "PNG" and picture.width > 200 and picture.height > 150
        assert np.asarray(picture.convert("L")).std() > 5            # not a blank canvas
    assert "v0123abcd" in html and "tiny" in html
    assert _row("seconds.per_image", "3.5") in html and _row("computed.faces", "40") in html


def test_report_numbers_match_the_tables(tiny_report):
    html = tiny_report
    assert _row("train", "28") in html and _row("total", "40") in html
    assert _row("faces", "no_face", "3") in html and _row("faces", "multi_face", "2") in html
    assert _row("sources", "unreadable_image", "1") in html and "7 quarantined inputs" in html
    assert _row("contempt_outside_7_class_view", "5") in html
    assert _row("no_face", "3", "0.075") in html
    assert "realised noise rate <b>0.2500</b>" in html and "realised_transition agrees" in html
    assert _row("sym-0.25", "sym", "0.25", "28", "7", "0.25", "0.25", "0") in html
    assert "34 valid crops of 40" in html and "28 of the 28 shown have landmarks" in html


def test_graph_agreement_matches_a_direct_count(tiny_version, tiny_report):
    from pipeline.contract.graphs import read_graph

    graph = read_graph(tiny_version / "graphs" / "au.parquet")
    pairs = [(LABELS[i], LABELS[j]) for i, row in zip(graph.sample_id, graph.neighbors) for j in row]
    expected = np.mean([a == b for a, b in pairs])
    overall, per_class, shares = neighbour_agreement(LABELS, graph.sample_id, graph.neighbors, 7)
    assert overall == pytest.approx(expected)
    for c in range(7):
        assert per_class[c] == pytest.approx(np.mean([b == c for a, b in pairs if a == c]))
    assert shares == pytest.approx(np.bincount(LABELS[graph.sample_id], minlength=7) / len(graph.sample_id))
    html = tiny_report
    # the metadata's value (pipeline.stages.graphs.label_agreement) and the report's own count, side by side
    assert f"<td class='num'>{expected:.4g}</td><td class='num'>{expected:.4g}</td>" in html
    assert _row("au", "34", "3", "euclidean", "1", "config", "exact", "1", "34") in html


def test_only_samples_still_renders_with_notes(tiny_version, tmp_path):
    bare = tmp_path / "bare" / "vbare"
    bare.mkdir(parents=True)
    (bare / "samples.parquet").write_bytes((tiny_version / "samples.parquet").read_bytes())
    html = build_report(bare).read_text()
    for _, title, _ in report_sections():
        assert f"<h2>{title}</h2>" in html
    for missing in ("quarantine.parquet", "faces.parquet", "crops/", "action_units.parquet",
                    "labels/*.parquet", "graphs/*.parquet"):
        assert f"Not available: {missing} is absent from this version." in html
    assert len(_images(html)) == 1                                     # the class histogram only


def test_missing_samples_is_a_clear_error(tmp_path):
    from pipeline.contract.errors import ArtifactError

    with pytest.raises(ArtifactError, match="samples.parquet is missing"):
        build_report(tmp_path)


def test_a_broken_table_is_noted_not_fatal(tmp_path):
    version = tmp_path / "broken" / "vbroken"
    labels = pa.array([0, 1, None, 2], pa.int8())                                  # one unlabelled sample
    write_table(version / "samples.parquet", pa.table({"sample_id": np.arange(4), "split": ["train"] * 4,
                                                       "label": labels}))
    write_table(version / "faces.parquet", pa.table({"sample_id": np.arange(3), "state": ["ok"] * 3}))
    html = build_report(version).read_text()
    assert "<h2>Face detection</h2>" in html and "This section could not be drawn" in html
    assert "Not available: graphs/*.parquet is absent" in html
    assert _row("neutral", "1") in html and _row("total", "4") in html


def test_graphs_section_gives_the_a_ij_spread_and_the_first_neighbour_overlap(tiny_version, tmp_path):
    import shutil

    from pipeline.contract.graphs import read_graph
    from pipeline.knn.similarity import similarity_spread
    from pipeline.report.data import load_version
    from pipeline.report.sections import graphs_section

    copy = tmp_path / tiny_version.name
    shutil.copytree(tiny_version, copy)
    au = read_graph(copy / "graphs" / "au.parquet")
    swapped = au.neighbors.copy()
    swapped[::2, [0, 1]] = swapped[::2, [1, 0]]                   # every second row: another first neighbour
    write_table(copy / "graphs" / "landmarks.parquet",
                graph_table(au.sample_id, swapped, au.distances, au.similarity), {"space": "landmarks", "K": K})
    html = graphs_section(load_version(copy))
    spread = similarity_spread(au.similarity)
    assert "a_ij median" in html and f"<td class='num'>{spread['median']:.4g}</td>" in html
    changed = float(np.mean(swapped[:, 0] != au.neighbors[:, 0]))
    assert _row("au", "landmarks", f"{1 - changed:.4g}", str(len(au.sample_id))) in html
