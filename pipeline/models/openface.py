"""OpenFace 2.x wrapper: write a shard's crops as PNGs, run the binary once over the folder, parse its CSVs.

`FaceLandmarkImg` (AUConfig.openface_mode 'image': static models, one CSV per image) suits independent
photos; `FeatureExtraction` ('sequence': one CSV with a frame per image in file-name order) treats the
folder as a video and calibrates AUs per person. The binary comes from AUConfig.openface_bin or
$OPENFACE_BIN; a missing or non-executable binary raises BackendMissingError naming both. Each call has
its own temporary folder, so shards may run in parallel threads or processes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.contract.classes import AU_INTENSITY_NAMES, AU_PRESENCE_NAMES
from pipeline.contract.errors import BackendMissingError, ConfigError, FerError

OPENFACE_MODES = {"image": "FaceLandmarkImg", "sequence": "FeatureExtraction"}


class OpenFaceError(FerError):
    """OpenFace ran but failed on a shard (non-zero exit, timeout, no CSV); the message keeps its stderr."""


INTENSITY_COLUMNS = tuple(f"{au}_r" for au in AU_INTENSITY_NAMES)
PRESENCE_COLUMNS = tuple(f"{au}_c" for au in AU_PRESENCE_NAMES)


@dataclass(frozen=True)
class OpenFaceRows:
    """A parsed OpenFace CSV: per row frame (or face) id, success, confidence, [R, 17] _r and [R, 18] _c."""

    frame: np.ndarray        # [R] int64 (`frame`, or `face` for FaceLandmarkImg, or the row number)
    success: np.ndarray      # [R] bool
    confidence: np.ndarray   # [R] float32
    intensity: np.ndarray    # [R, 17] float32
    presence: np.ndarray     # [R, 18] float32


def parse_openface_csv(path: str | Path) -> OpenFaceRows:
    """Read an OpenFace 2.x CSV (column names carry a leading space) into arrays, exactly as written."""
    import pandas as pd

    frame = pd.read_csv(path, skipinitialspace=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in INTENSITY_COLUMNS + PRESENCE_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} is not an OpenFace AU CSV: missing columns {missing[:6]} "
                          f"(run OpenFace with -aus); it has {list(frame.columns)[:8]}...")
    ids = frame["frame"] if "frame" in frame.columns else frame.get("face", pd.Series(np.arange(len(frame))))
    success = frame["success"] if "success" in frame.columns else pd.Series(np.ones(len(frame)))
    confidence = frame["confidence"] if "confidence" in frame.columns else pd.Series(np.ones(len(frame)))
    return OpenFaceRows(
        frame=ids.to_numpy(dtype=np.int64), success=success.to_numpy(dtype=np.float64) > 0.5,
        confidence=confidence.to_numpy(dtype=np.float32),
        intensity=frame[list(INTENSITY_COLUMNS)].to_numpy(dtype=np.float32),
        presence=frame[list(PRESENCE_COLUMNS)].to_numpy(dtype=np.float32))


def openface_binary(config) -> Path:
    """The OpenFace binary to run: AUConfig.openface_bin, else $OPENFACE_BIN; fails at once if unusable."""
    value = config.openface_bin or os.environ.get("OPENFACE_BIN")
    if not value:
        raise BackendMissingError(f"AU backend 'openface' needs the OpenFace {OPENFACE_MODES[config.openface_mode]} "
                                  "binary: set AUConfig.openface_bin or the env var OPENFACE_BIN (OpenFace 2.x is "
                                  "built from source; no package registry ships it)")
    path = Path(value)
    resolved = path if path.is_file() else Path(shutil.which(value) or value)
    if not resolved.is_file() or not os.access(resolved, os.X_OK):
        raise BackendMissingError(f"OpenFace binary {value!r} (AUConfig.openface_bin / OPENFACE_BIN) is not an "
                                  "executable file")
    return resolved


def run_openface(crops: np.ndarray, config) -> list[OpenFaceRows | None]:
    """Write the crops as PNGs, run OpenFace once over the folder, parse; one entry per crop (None = no row)."""
    import cv2

    binary = openface_binary(config)
    with tempfile.TemporaryDirectory(prefix="fer-openface-") as tmp:
        image_dir, out_dir = Path(tmp) / "images", Path(tmp) / "out"
        image_dir.mkdir()
        out_dir.mkdir()
        names = [f"{i:06d}" for i in range(len(crops))]
        for name, crop in zip(names, crops):
            cv2.imwrite(str(image_dir / f"{name}.png"), np.ascontiguousarray(crop[..., ::-1]))
        command = [str(binary), "-fdir", str(image_dir), "-out_dir", str(out_dir), *config.openface_extra_args]
        if config.openface_mode == "sequence":
            command += ["-of", "shard"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=config.openface_timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            stderr = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
            raise OpenFaceError(f"OpenFace timed out after {config.openface_timeout_s:.0f} s on {len(crops)} "
                                      f"crops (AUConfig.openface_timeout_s); stderr: {(stderr or '')[-2000:]}") from exc
        if done.returncode != 0:
            raise OpenFaceError(f"OpenFace ({binary.name}) exited with {done.returncode}; "
                                      f"stderr: {done.stderr[-2000:]}")
        if config.openface_mode == "sequence":
            return _rows_per_frame(out_dir / "shard.csv", len(crops))
        return [_best_row(out_dir / f"{name}.csv") for name in names]


def _rows_per_frame(path: Path, count: int) -> list[OpenFaceRows | None]:
    """FeatureExtraction -fdir: frame k (1-based) is the k-th image in file-name order."""
    if not path.is_file():
        raise OpenFaceError(f"OpenFace wrote no CSV at {path}")
    rows = parse_openface_csv(path)
    out: list[OpenFaceRows | None] = [None] * count
    for r in range(len(rows.frame)):
        index = int(rows.frame[r]) - 1
        if 0 <= index < count:
            out[index] = _slice(rows, r)
    return out


def _best_row(path: Path) -> OpenFaceRows | None:
    """FaceLandmarkImg: one CSV per image, one row per face found; keep the most confident."""
    if not path.is_file():
        return None
    rows = parse_openface_csv(path)
    if len(rows.frame) == 0:
        return None
    return _slice(rows, int(np.argmax(rows.confidence)))


def _slice(rows: OpenFaceRows, r: int) -> OpenFaceRows:
    return OpenFaceRows(rows.frame[r:r + 1], rows.success[r:r + 1], rows.confidence[r:r + 1],
                        rows.intensity[r:r + 1], rows.presence[r:r + 1])
