"""Face detection and alignment over one shard: samples -> faces table + aligned crops + quarantine.

Backends (AlignConfig.detector):
- `dlib` (default for raw images): dlib's frontal HOG detector; detections scoring below
  `score_threshold` are dropped; when nothing passes, the image is retried rotated by
  `retry_rotations_deg` (the HOG model is trained on upright faces). Of several faces the largest and most
  central is kept (rank = area x (1 - distance of its centre from the image centre / half the diagonal)),
  the status says `multi_face` and `n_faces` how many passed. The 68-point shape predictor then runs on the
  kept box and the crop is aligned from its 5 points (`refine_with_landmarks`), else from the box; the
  points are re-fitted on the upright crop (`upright_passes`), which takes dlib's error on faces rotated
  20 degrees from ~4.5 px to ~1 px at the eyes.
- `given`: boxes from samples.parquet `given_bbox` [x, y, w, h] (AffectNet); aligned from the dataset's own
  68 points (`given_landmarks`) when present and `use_given_landmarks`, else from the box; a null box is
  `no_face`.
- `prealigned`: the whole image is the face (RAF-DB aligned, FERPlus): a plain resize, recorded as a scale
  transform.
- `fan`: face-alignment's SFD detector from a local checkpoint (`fan_detector_checkpoint`), for GPU hosts.

Output, row for row with the input samples: the faces table (DESIGN faces.parquet: sample_id, status,
bbox [x, y, w, h] source pixels, score, detector, transform [6] 2x3 row-major, n_faces), crops [N, S, S, 3]
uint8 (zeros where status is no_face or unreadable), and quarantine rows for those two statuses.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from pipeline import geometry as align
from pipeline.contract.errors import BackendMissingError, ConfigError, choices_message
from pipeline.contract.tables import QuarantineRow, vector_type, vectors_to_arrow, vectors_to_numpy

log = logging.getLogger(__name__)

STAGE = "detect_align"
STAGE_VERSION = "1.0.0"
DETECTORS = ("dlib", "given", "prealigned", "fan")
USABLE_STATUSES = ("ok", "multi_face")

FACES_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("status", pa.string()), ("bbox", vector_type(4)), ("score", pa.float32()),
    ("detector", pa.string()), ("transform", vector_type(6)), ("n_faces", pa.int32()),
])


@dataclass(frozen=True)
class AlignConfig:
    """Detection and alignment parameters (all literal, all in the fingerprint)."""

    detector: str = "dlib"
    crop_size: int = 256
    score_threshold: float = 0.5          # dlib HOG: it gives low-score false positives below ~0.5
    upsample: int = 1                     # dlib HOG pyramid upsampling (finds faces down to ~40 px)
    detect_max_side: int = 640            # images are downscaled to this for the HOG pass only
    retry_rotations_deg: tuple[float, ...] = (20.0, -20.0)
    refine_with_landmarks: bool = True    # align from dlib's 68 points on the kept box
    upright_passes: int = 1               # re-fit the points on the upright crop this many times
    use_given_landmarks: bool = True      # `given`: align from the dataset's points when present
    fan_detector_checkpoint: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ConfigError(choices_message("detector (AlignConfig.detector)", self.detector, DETECTORS))
        if self.crop_size < 32:
            raise ConfigError(f"AlignConfig.crop_size must be at least 32, got {self.crop_size}")


@dataclass(frozen=True)
class FaceResult:
    """One sample's detection and alignment."""

    status: str
    bbox: np.ndarray        # [4] x, y, w, h source pixels (nan when no face)
    score: float
    transform: np.ndarray   # [2, 3] (nan when no face)
    n_faces: int
    detail: str = ""


def _no_face(status: str, n_faces: int = 0, detail: str = "") -> FaceResult:
    return FaceResult(status, np.full(4, np.nan), float("nan"), np.full((2, 3), np.nan), n_faces, detail)


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to [H, W, 3] uint8 RGB (grey and RGBA are converted). Raises OSError/ValueError."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def pick_face(boxes: np.ndarray, width: int, height: int) -> int:
    """Index of the largest, most central box among [F, 4] x, y, w, h boxes."""
    centres = boxes[:, :2] + 0.5 * boxes[:, 2:]                          # [F, 2]
    offset = np.linalg.norm(centres - np.array([width, height]) / 2.0, axis=1)
    half_diagonal = 0.5 * np.hypot(width, height)
    rank = boxes[:, 2] * boxes[:, 3] * np.clip(1.0 - offset / half_diagonal, 0.05, 1.0)
    return int(np.argmax(rank))


def _hog_boxes(image: np.ndarray, config: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """dlib HOG on a downscaled copy: ([F, 4] boxes in `image` pixels, [F] scores) above the threshold."""
    import cv2

    from pipeline.models.dlib_models import hog_detector

    height, width = image.shape[:2]
    factor = min(1.0, config.detect_max_side / max(height, width))
    small = image if factor == 1.0 else cv2.resize(image, (round(width * factor), round(height * factor)),
                                                   interpolation=cv2.INTER_AREA)
    rects, scores, _ = hog_detector().run(small, config.upsample, 0.0)
    boxes = np.array([[r.left(), r.top(), r.width(), r.height()] for r in rects], dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    keep = scores >= config.score_threshold
    return boxes.reshape(-1, 4)[keep] / factor, scores[keep]


def _dlib_points(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's 68 points [68, 2] for one [x, y, w, h] box."""
    import dlib

    from pipeline.models.dlib_models import shape_predictor

    x, y, w, h = (int(round(v)) for v in box)
    shape = shape_predictor()(image, dlib.rectangle(x, y, x + w - 1, y + h - 1))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def _upright_refine(image: np.ndarray, points: np.ndarray, config: AlignConfig) -> np.ndarray:
    """Re-run the shape predictor on the aligned (upright, template-scaled) crop and fit again.

    dlib's cascade starts from an upright mean shape inside an axis-aligned box, so on a rotated face its
    points are off by a few pixels; on the upright crop they settle. Returns the final 2x3 transform.
    """
    import dlib

    from pipeline.models.dlib_models import shape_predictor

    size = config.crop_size
    transform = align.transform_from_points(points, size)
    x, y, w, h = align.template_box(size)
    rect = dlib.rectangle(int(round(x)), int(round(y)), int(round(x + w - 1)), int(round(y + h - 1)))
    for _ in range(config.upright_passes):
        crop = align.warp_crop(image, transform, size)
        shape = shape_predictor()(crop, rect)
        in_crop = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)      # [68, 2]
        points = align.map_points(in_crop, align.invert_transform(transform)).astype(np.float64)
        transform = align.transform_from_points(points, size)
    return transform


def _rotated(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image rotated about its centre (same size) and the 2x3 matrix original -> rotated."""
    import cv2

    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR), matrix


def detect_dlib(image: np.ndarray, config: AlignConfig) -> FaceResult:
    """dlib HOG detection (with rotated retries) and alignment for one image."""
    height, width = image.shape[:2]
    attempts = [0.0, *config.retry_rotations_deg]
    for degrees in attempts:
        view, to_view = (image, None) if degrees == 0.0 else _rotated(image, degrees)
        boxes, scores = _hog_boxes(view, config)
        if len(boxes) == 0:
            continue
        best = pick_face(boxes, width, height)
        box, score = boxes[best], float(scores[best])
        if config.refine_with_landmarks:
            points = _dlib_points(view, box)                              # [68, 2] in view pixels
            if to_view is not None:
                points = align.map_points(points, align.invert_transform(to_view)).astype(np.float64)
            transform = _upright_refine(image, points, config)
        elif to_view is None:
            transform = align.transform_from_box(box, config.crop_size)
        else:
            continue  # a box found in a rotated view needs landmarks to come back upright
        if to_view is not None:  # report the box in source pixels: bounding box of its rotated corners
            corners = np.array([[box[0], box[1]], [box[0] + box[2], box[1]], [box[0], box[1] + box[3]],
                                [box[0] + box[2], box[1] + box[3]]])
            back = align.map_points(corners, align.invert_transform(to_view))
            box = np.concatenate([back.min(axis=0), back.max(axis=0) - back.min(axis=0)])
        status = "multi_face" if len(boxes) > 1 else "ok"
        return FaceResult(status, box.astype(np.float64), score, transform, len(boxes),
                          f"rotated {degrees:+.0f} deg" if degrees else "")
    return _no_face("no_face", 0, f"dlib HOG: nothing scored >= {config.score_threshold}")


def detect_given(row: dict, image: np.ndarray, config: AlignConfig) -> FaceResult:
    """The dataset's own box (and points, when present and wanted)."""
    box = row.get("given_bbox")
    if box is None or not np.all(np.isfinite(np.asarray(box, dtype=np.float64))):
        return _no_face("no_face", 0, "no given box (null or non-finite given_bbox)")
    box = np.asarray(box, dtype=np.float64)
    if box[2] <= 0 or box[3] <= 0:
        return _no_face("no_face", 0, f"given box has no area: {box.tolist()}")
    points = row.get("given_landmarks")
    if config.use_given_landmarks and points is not None:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if np.all(np.isfinite(points)) and len(points) in (68, 19):
            return FaceResult("ok", box, 1.0, align.transform_from_points(points, config.crop_size), 1)
    return FaceResult("ok", box, 1.0, align.transform_from_box(box, config.crop_size), 1)


def detect_prealigned(image: np.ndarray, config: AlignConfig) -> FaceResult:
    """The whole image is the face: a resize."""
    height, width = image.shape[:2]
    transform = align.resize_transform(width, height, config.crop_size)
    return FaceResult("ok", np.array([0.0, 0.0, width, height]), 1.0, transform, 1)


class _FanDetector:
    """face-alignment's SFD detector from a local checkpoint, built once per process."""

    _cache: dict[tuple[str, str], object] = {}

    @classmethod
    def get(cls, checkpoint: str, device: str) -> object:
        key = (checkpoint, device)
        if key not in cls._cache:
            require_fan_detector(checkpoint)
            from face_alignment.detection.sfd.sfd_detector import SFDDetector

            cls._cache[key] = SFDDetector(device=device, path_to_detector=checkpoint)
        return cls._cache[key]


def require_fan_detector(checkpoint: str | None) -> None:
    """Fail at once when the `fan` detector cannot run, naming the config key or package."""
    if not checkpoint:
        raise BackendMissingError("detector 'fan' needs AlignConfig.fan_detector_checkpoint: the path of "
                                  "face-alignment's SFD weights (s3fd-619a316812.pth)")
    if not Path(checkpoint).is_file():
        raise BackendMissingError(f"AlignConfig.fan_detector_checkpoint {checkpoint!r} is not a file")
    from pipeline.contract.errors import require_package

    require_package("face_alignment", "face-alignment", "make setup-gpu")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def detect_fan(image: np.ndarray, config: AlignConfig) -> FaceResult:
    """SFD boxes (score >= threshold), the largest-central kept, aligned from dlib's points on it."""
    detector = _FanDetector.get(str(config.fan_detector_checkpoint), resolve_device(config.device))
    found = np.asarray(detector.detect_from_image(image[..., ::-1].copy()), dtype=np.float64).reshape(-1, 5)
    found = found[found[:, 4] >= config.score_threshold]
    if len(found) == 0:
        return _no_face("no_face", 0, f"SFD: nothing scored >= {config.score_threshold}")
    boxes = np.column_stack([found[:, :2], found[:, 2:4] - found[:, :2]])    # [F, 4] x, y, w, h
    best = pick_face(boxes, image.shape[1], image.shape[0])
    if config.refine_with_landmarks:
        transform = _upright_refine(image, _dlib_points(image, boxes[best]), config)
    else:
        transform = align.transform_from_box(boxes[best], config.crop_size)
    status = "multi_face" if len(boxes) > 1 else "ok"
    return FaceResult(status, boxes[best], float(found[best, 4]), transform, len(boxes))


def detect_one(row: dict, image_root: Path, config: AlignConfig) -> tuple[FaceResult, np.ndarray | None]:
    """Read, detect and align one sample; never raises for a bad image (status says what happened)."""
    path = Path(image_root) / str(row["relpath"])
    try:
        image = read_rgb(path)
    except (OSError, ValueError, SyntaxError) as exc:
        return _no_face("unreadable", 0, f"{type(exc).__name__}: {exc}"), None
    if image.shape[0] < 2 or image.shape[1] < 2:
        return _no_face("unreadable", 0, f"image too small: {image.shape}"), None
    if config.detector == "prealigned":
        result = detect_prealigned(image, config)
    elif config.detector == "given":
        result = detect_given(row, image, config)
    elif config.detector == "fan":
        result = detect_fan(image, config)
    else:
        result = detect_dlib(image, config)
    if result.status not in USABLE_STATUSES:
        return result, None
    return result, align.warp_crop(image, result.transform, config.crop_size)


def _shard_rows(samples: pa.Table) -> list[dict]:
    """Rows as dicts, with vector columns as numpy arrays (None where null)."""
    columns = [c for c in ("sample_id", "relpath", "given_bbox", "given_landmarks") if c in samples.column_names]
    rows = [dict(sample_id=int(s)) for s in samples.column("sample_id").to_pylist()]
    for name in columns[1:]:
        column = samples.column(name)
        if pa.types.is_fixed_size_list(column.type):
            values = vectors_to_numpy(column)
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            for row, value, ok in zip(rows, values, valid):
                row[name] = value if ok else None
        else:
            for row, value in zip(rows, column.to_pylist()):
                row[name] = value
    return rows


def faces_table(sample_ids: np.ndarray, results: list[FaceResult], detector: str) -> pa.Table:
    """Results -> a table in FACES_SCHEMA; bbox/transform are null where no face was aligned."""
    ok = np.array([r.status in USABLE_STATUSES for r in results], dtype=bool)
    boxes = np.stack([r.bbox for r in results]) if results else np.zeros((0, 4))
    transforms = np.stack([align.transform_to_row(r.transform) for r in results]) if results else np.zeros((0, 6))
    return pa.table({
        "sample_id": pa.array(np.asarray(sample_ids, dtype=np.int64)),
        "status": pa.array([r.status for r in results], pa.string()),
        "bbox": vectors_to_arrow(boxes, valid=ok),
        "score": pa.array(np.array([r.score for r in results], dtype=np.float32)),
        "detector": pa.array([detector] * len(results), pa.string()),
        "transform": vectors_to_arrow(transforms, valid=ok),
        "n_faces": pa.array(np.array([r.n_faces for r in results], dtype=np.int32)),
    }, schema=FACES_SCHEMA)


def check_backend(config: AlignConfig) -> None:
    """Fail at once (before a shard starts) when the chosen detector cannot run here."""
    if config.detector == "fan":
        require_fan_detector(config.fan_detector_checkpoint)
    if config.detector == "dlib" or config.refine_with_landmarks and config.detector == "fan":
        from pipeline.models.dlib_models import hog_detector, shape_predictor

        hog_detector()
        if config.refine_with_landmarks:
            shape_predictor()


def detect_align_shard(samples: pa.Table, image_root: Path, config: AlignConfig,
                       progress: bool = True) -> tuple[pa.Table, np.ndarray, list[QuarantineRow]]:
    """Detect and align every sample of a shard.

    Returns (faces, crops, quarantine): faces has one row per input row, in input order; crops is
    [N, S, S, 3] uint8 in the same order, zero where status is `no_face` or `unreadable` (those rows also
    get a quarantine row). `multi_face` rows carry a real crop of the kept face and are not quarantined.
    """
    check_backend(config)
    if config.detector == "given" and "given_bbox" not in samples.column_names:
        raise ConfigError("detector 'given' needs a samples table with a given_bbox column; "
                          "use detector 'dlib' for datasets without boxes")
    rows = _shard_rows(samples)
    size = config.crop_size
    crops = np.zeros((len(rows), size, size, 3), dtype=np.uint8)      # [N, S, S, 3]
    results: list[FaceResult] = []
    quarantine: list[QuarantineRow] = []
    for i, row in enumerate(tqdm(rows, desc=f"detect+align ({config.detector})", unit="img",
                                 disable=not progress, leave=False)):
        try:
            result, crop = detect_one(row, image_root, config)
        except Exception as exc:  # a backend failing on one image must not stop the shard
            log.warning("detector %s failed on %s: %s", config.detector, row.get("relpath"), exc)
            result, crop = _no_face("no_face", 0, f"backend error {type(exc).__name__}: {exc}"), None
        results.append(result)
        if crop is not None:
            crops[i] = crop
        else:
            reason = "unreadable_image" if result.status == "unreadable" else "no_face"
            quarantine.append(QuarantineRow(relpath=str(row.get("relpath", "")), stage=STAGE, reason=reason,
                                            detail=result.detail, sample_id=row["sample_id"]))
    sample_ids = np.array([r["sample_id"] for r in rows], dtype=np.int64)
    return faces_table(sample_ids, results, config.detector), crops, quarantine
