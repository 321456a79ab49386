"""Adapter for the embedded synthetic dataset (pipeline.synthetic.generator): generated on demand, cached.

Images are written once as PNG under <work_dir>/synthetic-images/<config fingerprint>/<split>/,
with their known truth (class, label distribution, 68 landmarks, AU intensities, valence/arousal) in
Parquet parts beside them. Each record carries its known 68 points (`given_landmarks`) and a face box
derived from them (`given_bbox`, see `box_from_landmarks`), so `align.detector=given` and
`landmarks.backend=provided` run on synthetic exactly as on AffectNet's own boxes and points; the
known valence/arousal gives the default version its `va` graph. A larger `n` with the same seed
reuses every image already generated; a run killed midway keeps every finished part.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from pipeline.contract.atomic import atomic_path
from pipeline.contract.classes import class_names
from pipeline.contract.config import build_dataclass
from pipeline.contract.errors import ConfigError
from pipeline.contract.tables import (
    read_table,
    vectors_to_arrow,
    vectors_to_numpy,
    write_table,
)
from pipeline.sources.base import SourceRecord, SourceScan
from pipeline.specs import DatasetSpec
from pipeline.store.fingerprint import fingerprint

log = logging.getLogger(__name__)
ADAPTER_VERSION = "2.0"  # 2.0: given_bbox from the known points, valence/arousal
PART_SIZE = 250


def synthetic_config(spec: DatasetSpec, overrides: dict | None = None):
    """SyntheticConfig from the spec's options, the spec's class count and overrides (e.g. n)."""
    from pipeline.synthetic.generator import SyntheticConfig

    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    given = {**spec.options, **(overrides or {})}
    if "num_classes" in given:   # a spec key: a second value here could only disagree with it
        raise ConfigError(f"synthetic option num_classes={given['num_classes']!r} is not an option: the class "
                          f"count is the spec's num_classes ({spec.num_classes}; 7 or 8 in the dataset spec)")
    options = {**given, "num_classes": spec.num_classes}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"unknown synthetic option(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return build_dataclass(SyntheticConfig, options)     # values coerced to the fields' types


def box_from_landmarks(points: np.ndarray) -> np.ndarray:
    """[4] float32 face box x, y, w, h (image pixels) from [68, 2] or [136] points.

    The inverse of pipeline.geometry.transform_from_box: a square box of side BOX_SIDE_PER_IOD
    eye-centre distances, centred on the eye midpoint horizontally, with the eye line
    BOX_EYES_FROM_TOP of its height below its top (the proportions measured on dlib HOG boxes,
    which AffectNet's boxes resemble). Aligning from this box alone lands the eyes where aligning
    from the points does, up to the face's roll.
    """
    from pipeline.geometry import BOX_EYES_FROM_TOP, BOX_SIDE_PER_IOD, five_points

    eyes = five_points(np.asarray(points, np.float64).reshape(68, 2))[:2]  # [2, 2] eye centres
    side = BOX_SIDE_PER_IOD * float(np.linalg.norm(eyes[1] - eyes[0]))
    mid = eyes.mean(axis=0)  # [2] pixel-index coordinates; transform_from_box subtracts 0.5
    x, y = mid[0] + 0.5 - 0.5 * side, mid[1] + 0.5 - BOX_EYES_FROM_TOP * side
    return np.array([x, y, side, side], np.float32)


def _cache_key(config) -> str:
    """Images depend on everything but n: one cache folder serves every n with the same settings."""
    from pipeline.synthetic.generator import SYNTHETIC_VERSION, config_params

    params = {k: v for k, v in config_params(config).items() if k != "n"}
    return fingerprint("synthetic-images", SYNTHETIC_VERSION, params)


def _relpath(config, index: int) -> str:
    from pipeline.synthetic.generator import split_of

    return f"{split_of(config, index)}/{index:07d}.png"


def _render_part(config, image_root: Path, indices: list[int]) -> pa.Table:
    """Generate and save one part's images; return their truth rows."""
    from pipeline.synthetic.generator import generate_sample

    samples = []
    for index in indices:
        sample = generate_sample(config, index)
        path = image_root / _relpath(config, index)
        with atomic_path(path) as tmp:
            Image.fromarray(sample.image).save(tmp, format="PNG", compress_level=1)
        samples.append(sample)
    return pa.table({
        "index": pa.array(indices, type=pa.int64()),
        "label": pa.array([s.label for s in samples], type=pa.int8()),
        "distribution": vectors_to_arrow(np.stack([s.distribution for s in samples])),
        "landmarks": vectors_to_arrow(np.stack([s.landmarks.reshape(-1) for s in samples])),
        "au_intensity": vectors_to_arrow(np.stack([s.au_intensity for s in samples])),
        "intensity": pa.array([s.intensity for s in samples], type=pa.float32()),
        "valence": pa.array([s.valence for s in samples], type=pa.float32()),
        "arousal": pa.array([s.arousal for s in samples], type=pa.float32()),
        "identity": pa.array([s.identity for s in samples], type=pa.int32()),
    })


def _load_truth(truth_dir: Path) -> dict[int, dict]:
    truth: dict[int, dict] = {}
    for part in sorted(truth_dir.glob("part-*.parquet")):
        table = read_table(part)
        arrays = {name: vectors_to_numpy(table.column(name)) for name in ("distribution", "landmarks", "au_intensity")}
        scalars = {name: table.column(name).to_pylist() for name in ("label", "valence", "arousal")}
        for row, index in enumerate(table.column("index").to_pylist()):
            truth[index] = {**{name: values[row] for name, values in scalars.items()},
                            **{name: values[row] for name, values in arrays.items()}}
    return truth


def ensure_generated(config, work_dir: Path, workers: int = 0, progress: bool = True) -> tuple[Path, dict[int, dict]]:
    """Generate whatever images of `config` are not cached yet; returns (image_root, truth by index)."""
    image_root = work_dir / "synthetic-images" / _cache_key(config)
    truth_dir = image_root / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    truth = _load_truth(truth_dir)
    missing = [i for i in range(config.n) if i not in truth or not (image_root / _relpath(config, i)).is_file()]
    parts = [missing[i:i + PART_SIZE] for i in range(0, len(missing), PART_SIZE)]
    workers = workers or min(len(parts), os.cpu_count() or 1)
    if parts:
        log.info("generating %d synthetic images in %d parts", len(missing), len(parts))
        bar = tqdm(total=len(missing), desc="generate synthetic", unit="img", disable=not progress)
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(_render_part, config, image_root, part) for part in parts]
            for part, future in zip(parts, futures):
                table = future.result()
                write_table(truth_dir / f"part-{part[0]:07d}-{part[-1]:07d}.parquet", table)
                bar.update(len(part))
        bar.close()
        truth = _load_truth(truth_dir)
    return image_root, truth


def scan_synthetic(root: Path, spec: DatasetSpec, work_dir: Path, overrides: dict | None = None,
                   progress: bool = True) -> SourceScan:
    """Generate (or reuse) the images, then list them as records with their known truth."""
    from pipeline.synthetic.generator import config_params

    config = synthetic_config(spec, overrides)
    image_root, truth = ensure_generated(config, root, progress=progress)
    names = class_names(config.num_classes)
    scan = SourceScan(image_root=image_root, with_votes=True, landmark_points=68, with_true_aus=True,
                      with_given_box=True, with_va=True,
                      params={"adapter": f"synthetic@{ADAPTER_VERSION}", "config": config_params(config)})
    for index in range(config.n):
        item = truth[index]
        relpath = _relpath(config, index)
        scan.records.append(SourceRecord(
            relpath=relpath, split=relpath.split("/", 1)[0], label=int(item["label"]),
            source_label=names[int(item["label"])], valence=item["valence"], arousal=item["arousal"],
            votes=item["distribution"],
            given_bbox=box_from_landmarks(item["landmarks"]), given_landmarks=item["landmarks"],
            true_aus=item["au_intensity"],
        ))
    return scan
