"""Action units over one shard: crops (+ 68 landmarks) -> intensity [N, 17] (AU01..AU45 _r, 0-5) + presence [N, 18].

Backends (AUConfig.backend), one registered class each, looked up by name; `check_backend` runs before
any crop (a missing OpenFace binary fails there, naming AUConfig.openface_bin / OPENFACE_BIN). Both are
safe under threads and processes: `estimate` is pure numpy, `openface` runs one process per shard in its
own temporary folder.
- `openface`: OpenFace 2.x. One process per shard: the shard's crops are written as PNGs into a temporary
  directory and the binary runs once over it with `-fdir`. `FaceLandmarkImg` (default mode 'image': static
  models, one CSV per image) suits independent photos; `FeatureExtraction` (mode 'sequence': one CSV with a
  frame per image in file-name order) treats the folder as a video and calibrates AUs per person, which
  mixes subjects, so use it only for a reason. The binary comes from AUConfig.openface_bin or $OPENFACE_BIN.
  Rows with success=0 (or no row) are quarantined; a timeout or a non-zero exit raises with stderr kept.
- `estimate`: AU intensities ESTIMATED from 68-point landmark geometry (not OpenFace, not a trained AU
  model): features in inter-ocular units in the eye-aligned frame (brow heights, brow gap, lid heights, eye
  opening, mouth-corner height, mouth width, lip gap, nose and jaw lengths), minus a neutral reference, then
  a non-negative linear map per AU onto the 0-5 scale using only the features that AU moves, signed so that
  a brow raise can only raise AU01/02, a smile AU12, an open jaw AU26. The neutral reference and the scales
  are calibrated against the synthetic generator's known AU intensities (`calibrate_estimate`, run by
  bench/calibrate_au_estimates.py); AU45 (blink) has no synthetic signal and keeps a geometric scale
  (5 x the relative loss of eye opening). Presence: intensity >= `presence_threshold`; AU28 (lip suck) is
  not visible to the geometry and is always 0.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa

from pipeline.contract.classes import AU_INTENSITY_NAMES, AU_PRESENCE_NAMES
from pipeline.contract.errors import ConfigError, choices_message
from pipeline.assemble import assemble_table, by_key, quarantine_by_key
from pipeline.contract.ranges import bounded
from pipeline.contract.registry import Registry
from pipeline.contract.tables import ACTION_UNITS, QuarantineRow, vector_type, vectors_to_arrow, vectors_to_numpy
from pipeline.models.openface import (  # noqa: F401 - re-exported: the wrapper is part of this stage's API
    OPENFACE_MODES,
    OpenFaceError,
    OpenFaceRows,
    openface_binary,
    parse_openface_csv,
    run_openface,
)
from pipeline.stages.base import Stage, register_stage
from pipeline.store.parts import Part, PartStore

log = logging.getLogger(__name__)

STAGE = "action_units"
STAGE_VERSION = "1.0.0"
BACKENDS: Registry[type] = Registry("AU backend (AUConfig.backend)")
register_backend = BACKENDS.register

AU_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("intensity", vector_type(len(AU_INTENSITY_NAMES))),
    ("presence", vector_type(len(AU_PRESENCE_NAMES))), ("backend", pa.string()),
])


@dataclass(frozen=True)
class AUConfig:
    """Action-unit backend and its literal parameters."""

    backend: str = "estimate"
    openface_bin: str | None = None          # else $OPENFACE_BIN
    openface_mode: str = "image"             # image (FaceLandmarkImg) | sequence (FeatureExtraction)
    openface_timeout_s: float = bounded(1800.0, 0, 7 * 86400, lo_open=True)
    openface_extra_args: tuple[str, ...] = ()
    presence_threshold: float = bounded(1.0, 0, 5)         # estimate: presence = intensity >= this

    def __post_init__(self) -> None:
        BACKENDS.get(self.backend)        # an unknown name raises ConfigError listing the registered ones
        if self.openface_mode not in OPENFACE_MODES:
            raise ConfigError(choices_message("OpenFace mode (AUConfig.openface_mode)", self.openface_mode,
                                              OPENFACE_MODES))


# --- landmark-geometry estimates --------------------------------------------------------------------------

FEATURES = ("brow_inner", "brow_outer", "brow_gap", "upper_lid", "lower_lid", "eye_open", "corner_height",
            "mouth_width", "lip_gap", "upper_lip", "lower_lip", "nose_length", "jaw")

# AU -> features it moves, with the sign in which the AU moves them (image y points down; heights are
# measured upward from the eye line, lengths downward from it).
AU_FEATURES: dict[str, tuple[tuple[str, int], ...]] = {
    "AU01": (("brow_inner", +1),),
    "AU02": (("brow_outer", +1),),
    "AU04": (("brow_inner", -1), ("brow_gap", -1)),
    "AU05": (("upper_lid", +1), ("eye_open", +1)),
    "AU06": (("lower_lid", +1), ("corner_height", +1)),
    "AU07": (("lower_lid", +1), ("eye_open", -1)),
    "AU09": (("nose_length", -1), ("upper_lip", -1)),
    "AU10": (("upper_lip", -1),),
    "AU12": (("corner_height", +1), ("mouth_width", +1)),
    "AU14": (("mouth_width", +1),),
    "AU15": (("corner_height", -1),),
    "AU17": (("lower_lip", -1), ("jaw", -1)),
    "AU20": (("mouth_width", +1), ("corner_height", -1)),
    "AU23": (("mouth_width", -1),),
    "AU25": (("lip_gap", +1),),
    "AU26": (("jaw", +1), ("lip_gap", +1)),
    "AU45": (("eye_open", -1),),
}


def geometry_features(points: np.ndarray) -> np.ndarray:
    """[N, 68, 2] landmarks (any similarity frame) -> [N, F] features in inter-ocular units, eye-aligned frame."""
    p = np.asarray(points, dtype=np.float64)
    left, right = p[:, 36:42].mean(axis=1), p[:, 42:48].mean(axis=1)           # [N, 2]
    axis = right - left
    iod = np.linalg.norm(axis, axis=1, keepdims=True)                           # [N, 1]
    cos, sin = (axis / iod).T                                                   # [N] each
    centred = p - (0.5 * (left + right))[:, None, :]                             # [N, 68, 2]
    x = (centred[..., 0] * cos[:, None] + centred[..., 1] * sin[:, None]) / iod  # [N, 68]
    y = (-centred[..., 0] * sin[:, None] + centred[..., 1] * cos[:, None]) / iod
    mean_y = lambda idx: y[:, list(idx)].mean(axis=1)
    return np.stack([
        -mean_y((20, 21, 22, 23)),                       # brow_inner: height above the eye line
        -mean_y((17, 18, 25, 26)),                       # brow_outer
        x[:, 22] - x[:, 21],                             # brow_gap
        -mean_y((37, 38, 43, 44)),                       # upper_lid height
        -mean_y((40, 41, 46, 47)),                       # lower_lid height
        mean_y((40, 41, 46, 47)) - mean_y((37, 38, 43, 44)),  # eye_open
        mean_y((33,)) - mean_y((48, 54)),                # corner_height: above the nose base is larger
        x[:, 54] - x[:, 48],                             # mouth_width
        mean_y((65, 66, 67)) - mean_y((61, 62, 63)),     # lip_gap (inner lips)
        mean_y((50, 51, 52)) - mean_y((33,)),            # upper_lip: nose base to upper lip
        mean_y((56, 57, 58)) - mean_y((33,)),            # lower_lip: nose base to lower lip
        mean_y((31, 32, 33, 34, 35)),                    # nose_length: eye line to nose base
        mean_y((7, 8, 9)),                               # jaw: eye line to chin
    ], axis=1).astype(np.float64)                        # [N, F]


@dataclass(frozen=True)
class EstimateCalibration:
    """Neutral feature reference [F] and per-AU scales {AU: [(feature, sign, scale)]}."""

    neutral: tuple[float, ...]
    scales: dict[str, tuple[tuple[str, int, float], ...]] = field(default_factory=dict)
    source: str = "geometry"


# Calibrated by bench/calibrate_au_estimates.py on pipeline.synthetic.generator (see bench/results/au_calibration.json).
CALIBRATION = EstimateCalibration(
    neutral=(0.3362, 0.29593, 0.45783, 0.07349, -0.0566, 0.13009, -0.26629, 0.80326, -0.0, 0.15825, 0.3901, 0.67356, 1.67893),
    scales={
        'AU01': (('brow_inner', 1, 32.1911),),
        'AU02': (('brow_outer', 1, 26.6794),),
        'AU04': (('brow_inner', -1, 0.0), ('brow_gap', -1, 28.8884)),
        'AU05': (('upper_lid', 1, 99.6312), ('eye_open', 1, 0.0)),
        'AU06': (('lower_lid', 1, 11.4365), ('corner_height', 1, 22.3808)),
        'AU07': (('lower_lid', 1, 83.8097), ('eye_open', -1, 0.0)),
        'AU09': (('nose_length', -1, 32.0005), ('upper_lip', -1, 23.7839)),
        'AU10': (('upper_lip', -1, 50.4715),),
        'AU12': (('corner_height', 1, 35.0837), ('mouth_width', 1, 1.5727)),
        'AU14': (('mouth_width', 1, 2.745),),
        'AU15': (('corner_height', -1, 23.167),),
        'AU17': (('lower_lip', -1, 0.0), ('jaw', -1, 19.4893)),
        'AU20': (('mouth_width', 1, 7.4089), ('corner_height', -1, 3.9726)),
        'AU23': (('mouth_width', -1, 21.2563),),
        'AU25': (('lip_gap', 1, 18.1471),),
        'AU26': (('jaw', 1, 6.2701), ('lip_gap', 1, 7.5122)),
        'AU45': (('eye_open', -1, 38.4355),),
    },
    source="synthetic")


def calibrate_estimate(points: np.ndarray, intensity: np.ndarray, neutral_mask: np.ndarray) -> EstimateCalibration:
    """Fit the neutral reference (mean features of neutral faces) and non-negative per-AU scales (NNLS).

    points [N, 68, 2], intensity [N, 17] known AU intensities (0-5), neutral_mask [N] bool.
    """
    from scipy.optimize import nnls

    feats = geometry_features(points)                                           # [N, F]
    neutral = feats[neutral_mask].mean(axis=0)                                  # [F]
    delta = feats - neutral                                                     # [N, F]
    scales: dict[str, tuple[tuple[str, int, float], ...]] = {}
    for k, au in enumerate(AU_INTENSITY_NAMES):
        spec = AU_FEATURES[au]
        columns = np.stack([sign * delta[:, FEATURES.index(name)] for name, sign in spec], axis=1)  # [N, m]
        target = intensity[:, k]
        if np.ptp(target) < 1e-6:  # no signal (AU45 in the synthetic set): geometric default
            scales[au] = tuple((name, sign, _geometric_scale(name, neutral)) for name, sign in spec)
            continue
        weights, _ = nnls(np.clip(columns, 0.0, None), target)
        scales[au] = tuple((name, sign, float(w)) for (name, sign), w in zip(spec, weights))
    return EstimateCalibration(tuple(float(v) for v in neutral), scales, "synthetic")


def _geometric_scale(feature: str, neutral: np.ndarray) -> float:
    """5 intensity units for losing the whole neutral value of a feature (e.g. eyes fully shut)."""
    return float(5.0 / max(abs(neutral[FEATURES.index(feature)]), 1e-6))


def estimate_aus(points: np.ndarray, calibration: EstimateCalibration | None = None) -> np.ndarray:
    """[N, 68, 2] landmarks -> [N, 17] estimated intensities (0-5)."""
    calibration = calibration or active_calibration()
    feats = geometry_features(points)                                           # [N, F]
    delta = feats - np.asarray(calibration.neutral)                             # [N, F]
    out = np.zeros((len(feats), len(AU_INTENSITY_NAMES)), dtype=np.float64)     # [N, 17]
    for k, au in enumerate(AU_INTENSITY_NAMES):
        for name, sign, scale in calibration.scales[au]:
            out[:, k] += scale * np.clip(sign * delta[:, FEATURES.index(name)], 0.0, None)
    return np.clip(out, 0.0, 5.0).astype(np.float32)


def presence_from_intensity(intensity: np.ndarray, threshold: float) -> np.ndarray:
    """[N, 17] intensities -> [N, 18] presence (AU_PRESENCE_NAMES order; AU28 always 0)."""
    presence = np.zeros((len(intensity), len(AU_PRESENCE_NAMES)), dtype=np.float32)
    for j, au in enumerate(AU_PRESENCE_NAMES):
        if au in AU_INTENSITY_NAMES:
            presence[:, j] = intensity[:, AU_INTENSITY_NAMES.index(au)] >= threshold
    return presence


def active_calibration() -> EstimateCalibration:
    """The stored synthetic calibration."""
    if not CALIBRATION.neutral:
        raise ConfigError("the AU estimate calibration is empty; run bench/calibrate_au_estimates.py")
    return CALIBRATION


# --- shard ---------------------------------------------------------------------------------------------------

def au_table(sample_ids: np.ndarray, intensity: np.ndarray, presence: np.ndarray, backend: str) -> pa.Table:
    return pa.table({
        "sample_id": pa.array(np.asarray(sample_ids, dtype=np.int64)),
        "intensity": vectors_to_arrow(np.asarray(intensity, dtype=np.float32).reshape(-1, len(AU_INTENSITY_NAMES))),
        "presence": vectors_to_arrow(np.asarray(presence, dtype=np.float32).reshape(-1, len(AU_PRESENCE_NAMES))),
        "backend": pa.array([backend] * len(sample_ids), pa.string()),
    }, schema=AU_SCHEMA)


class AUBackend(abc.ABC):
    """One AU backend: `check` (before any crop), then `run` over a shard."""

    @classmethod
    def check(cls, config: AUConfig) -> None:
        """Raise ConfigError / BackendMissingError when this backend cannot run with config."""

    @abc.abstractmethod
    def run(self, crops: np.ndarray | None, landmarks: np.ndarray | None, count: int,
            config: AUConfig) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """-> (intensity [count, 17], presence [count, 18], {row: quarantine reason})."""


@register_backend("estimate")
class EstimatedAUs(AUBackend):
    """AU intensities estimated from 68-point landmark geometry (labelled as estimates)."""

    @classmethod
    def check(cls, config: AUConfig) -> None:
        active_calibration()

    def run(self, crops: np.ndarray | None, landmarks: np.ndarray | None, count: int,
            config: AUConfig) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        if landmarks is None or np.asarray(landmarks).shape[1:] != (68, 2):
            shape = None if landmarks is None else np.asarray(landmarks).shape
            raise ConfigError(f"AU backend 'estimate' needs 68-point landmarks [B, 68, 2], got {shape}; "
                              "run the landmark stage with output_layout 'native' and a 68-point backend")
        landmarks = np.asarray(landmarks, dtype=np.float64)                      # [B, 68, 2]
        ok = np.isfinite(landmarks).all(axis=(1, 2))                             # [B]
        intensity = np.zeros((count, len(AU_INTENSITY_NAMES)), dtype=np.float32)
        if ok.any():
            intensity[ok] = estimate_aus(landmarks[ok])
        presence = presence_from_intensity(intensity, config.presence_threshold)
        return intensity, presence, {int(i): "non_finite_landmarks" for i in np.flatnonzero(~ok)}


@register_backend("openface")
class OpenFaceAUs(AUBackend):
    """OpenFace 2.x run once per shard over the crops written as PNGs."""

    @classmethod
    def check(cls, config: AUConfig) -> None:
        openface_binary(config)

    def run(self, crops: np.ndarray | None, landmarks: np.ndarray | None, count: int,
            config: AUConfig) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        if crops is None or len(crops) != count:
            raise ConfigError("AU backend 'openface' needs one crop per sample id")
        results = run_openface(crops, config) if len(crops) else []
        intensity = np.zeros((count, len(AU_INTENSITY_NAMES)), dtype=np.float32)
        presence = np.zeros((count, len(AU_PRESENCE_NAMES)), dtype=np.float32)
        reasons: dict[int, str] = {}
        for i, row in enumerate(results):
            if row is None:
                reasons[i] = "openface_no_output"
            elif not row.success[0]:
                reasons[i] = "openface_success_0"
            else:
                intensity[i], presence[i] = row.intensity[0], row.presence[0]
        return intensity, presence, reasons


def check_backend(config: AUConfig) -> None:
    """Fail at once when the chosen backend cannot run here."""
    BACKENDS.get(config.backend).check(config)


def action_units_shard(crops: np.ndarray | None, sample_ids: np.ndarray, landmarks: np.ndarray | None,
                       config: AUConfig) -> tuple[pa.Table, list[QuarantineRow]]:
    """AUs for one shard. `estimate` needs landmarks [B, 68, 2] (crops may be None); `openface` needs crops.

    Returns (table, quarantine): one table row per sample that got AUs (sample_id, intensity [17],
    presence [18], backend); the others (OpenFace success=0 or no row, non-finite or non-68-point
    landmarks) get a quarantine row instead.
    """
    check_backend(config)
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    intensity, presence, reasons = BACKENDS.get(config.backend)().run(crops, landmarks, len(sample_ids), config)
    keep = np.array([i not in reasons for i in range(len(sample_ids))], dtype=bool)
    quarantine = [QuarantineRow(relpath="", stage=STAGE, reason=reason, detail=f"backend {config.backend}",
                                sample_id=int(sample_ids[i])) for i, reason in sorted(reasons.items())]
    return au_table(sample_ids[keep], intensity[keep], presence[keep], config.backend), quarantine


# --- the registered stage ----------------------------------------------------------------------------------

def action_units_part(shard: pa.Table, upstream: dict[str, PartStore], config: AUConfig, image_root=None) -> Part:
    """Action units on one shard's crops, with its landmarks where the backend uses them."""
    keys = shard.column("key").to_pylist()
    crops = upstream["faces"].gather_array("crops", keys)             # [B, S, S, 3]
    found, _ = upstream["landmarks"].gather(keys, ["points"])
    points = np.full((len(keys), 68, 2), np.nan, np.float32)          # [B, P, 2]
    if found.num_rows:
        values = vectors_to_numpy(found.column("points"))
        position = {k: i for i, k in enumerate(keys)}
        rows = [position[k] for k in found.column("key").to_pylist()]
        points = np.full((len(keys), values.shape[1] // 2, 2), np.nan, np.float32)
        points[rows] = values.reshape(len(rows), -1, 2)
    table, quarantine = action_units_shard(crops, shard.column("sample_id").to_numpy(), points, config)
    return Part(by_key(table, keys), quarantine_by_key(quarantine, shard))


def _report() -> list:
    from pipeline.report import sections

    return [("action-units", "Action units", sections.action_units_section)]


PREPARE_STAGE = register_stage(Stage(
    name=STAGE, version=STAGE_VERSION, config=AUConfig, per_image=True, reads=("faces", "landmarks"),
    writes=(ACTION_UNITS,), after=("landmarks",), check=check_backend, part=action_units_part,
    assemble=partial(assemble_table, table=ACTION_UNITS, stage=STAGE), report=_report))
