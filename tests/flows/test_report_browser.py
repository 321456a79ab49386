"""report.html renders in a real headless browser (Debian chromium): slow, skipped without chromium.

The version directory is built from the synthetic generator (true landmarks and AU intensities stand in
for the landmark and AU stages; the crops are the generated images), with noisy-label variants from
pipeline.stages.noise and graphs from pipeline.stages.graphs, so the page shows real faces and real stage metadata.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from bench.report_screenshot import CHROMIUM, screenshot
from pipeline.contract.classes import CLASSES_7
from pipeline.contract.crops import create_crop_store, write_valid_mask
from pipeline.contract.graphs import write_graph
from pipeline.contract.tables import QuarantineRow, quarantine_table, samples_schema, vectors_to_arrow, write_table
from pipeline.knn import KnnConfig
from pipeline.report.build import build_report
from pipeline.stages.graphs import GraphConfig, build_space_graph
from pipeline.stages.noise import write_variant_set
from pipeline.synthetic.generator import SyntheticConfig, generate_sample, split_of

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="chromium is not installed (apt-get install chromium)")]
N, K, SIZE = 56, 4, 256


def _synthetic_version(out: Path) -> None:
    config = SyntheticConfig(n=N, size=SIZE, seed=3)
    samples = [generate_sample(config, i) for i in range(N)]
    labels = np.array([s.label for s in samples])
    splits = [split_of(config, i) for i in range(N)]
    write_table(out / "samples.parquet", pa.table({
        "sample_id": np.arange(N, dtype=np.int64), "split": splits, "relpath": [f"{i:05d}.png" for i in range(N)],
        "content_hash": [f"{i:x}" for i in range(N)], "label": labels.astype(np.int8),
        "source_label": [CLASSES_7[c] for c in labels], "width": np.full(N, SIZE, np.int32),
        "height": np.full(N, SIZE, np.int32)}, schema=samples_schema(7, False, False, False)),
        {"dataset": "synthetic", "classes": list(CLASSES_7), "exclusions": {"blend_below_threshold": 4}})
    write_table(out / "quarantine.parquet", quarantine_table(
        [QuarantineRow("00003.png", "faces", "no_face", "no detection above 0.5", 3)]))
    write_table(out / "faces.parquet", pa.table({"sample_id": np.arange(N, dtype=np.int64),
                                                 "status": ["no_face" if i == 3 else "ok" for i in range(N)]}))
    crops = create_crop_store(out / "crops", N, SIZE)                       # [N, S, S, 3] uint8
    for s in samples:
        crops[s.index] = s.image
    crops.flush()
    write_valid_mask(out / "crops", np.arange(N) != 3)
    points = np.stack([s.landmarks for s in samples]).reshape(N, 136)      # [N, 2P]
    aus = np.stack([s.au_intensity for s in samples])                      # [N, 17]
    ids = np.arange(N, dtype=np.int64)
    write_table(out / "landmarks.parquet", pa.table({"sample_id": ids, "points": vectors_to_arrow(points)}))
    write_table(out / "action_units.parquet", pa.table({
        "sample_id": ids, "intensity": vectors_to_arrow(aus),
        "presence": vectors_to_arrow(np.concatenate([aus[:, :16], np.zeros((N, 1)), aus[:, 16:]], 1) > 1),
        "backend": ["synthetic-truth"] * N}))
    table = pa.table({"sample_id": ids, "split": splits, "label": labels})
    transition = np.full((7, 7), 0.05) + np.eye(7) * 0.65                  # a user-given matrix (rows sum to 1)
    write_variant_set(out / "labels", table, ["clean", "sym-0.30", "sym-0.30-s1", "asym-0.30", "trans"], 7,
                      transition=transition)
    train = np.flatnonzero(np.array(splits) == "train")
    config = GraphConfig(knn=KnnConfig(k=K, backend="exact"))
    for space, features in (("au", aus), ("landmarks", points)):
        graph, metadata = build_space_graph(features[train], ids[train], labels[train], config, space)
        write_graph(out / "graphs" / f"{space}.parquet", graph, metadata)


def test_report_renders_in_headless_chromium(tmp_path):
    version = tmp_path / "synthetic" / "vbrowser"
    _synthetic_version(version)
    report = build_report(version, {"seconds": {"total": 1.0}})
    png = tmp_path / "report.png"
    screenshot(report, png, 1280, 4000, timeout_s=120)
    picture = np.asarray(Image.open(png).convert("RGB"))                     # [H, W, 3]
    assert picture.shape[:2] == (4000, 1280)
    assert picture.std() > 20                                              # a real page, not blank
    top = picture[:1000]
    assert (top < 100).all(axis=2).mean() > 0.002                          # dark text/plot pixels near the top
    colourful = np.ptp(picture.astype(int), axis=2) > 60                   # plots and faces, not just text
    assert colourful.mean() > 0.02
    keep = os.environ.get("FER_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(png, keep)
