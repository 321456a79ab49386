"""Face detection and alignment over one shard: samples -> faces table + aligned crops + quarantine.

Backends (AlignConfig.detector), one registered class each:
- `dlib` (default for raw images): dlib's frontal HOG detector; detections scoring below
  `score_threshold` are dropped; when nothing passes, the image is retried rotated by
  `retry_rotations_deg` (the HOG model is trained on upright faces). Of several faces the largest and most
  central is kept (rank = area x (1 - distance of its centre from the image centre / half the diagonal)),
  the status says `multi_face` and `n_faces` how many passed. The 68-point shape predictor then runs on the
  kept box and the crop is aligned from its 5 points (`refine_with_landmarks`), else from the box; the
  points are re-fitted on the upright crop (`upright_passes`), which takes dlib's error on faces rotated
  20 degrees from ~4.5 px to ~1 px at the eyes.
- `given`: boxes from samples.parquet `given_bbox` [x, y, w, h] (AffectNet); aligned from the dataset's own
  68 points (`given_landmarks`) when present and `use_given_landmarks`, else from the box. The crop is
  known before decoding, so a JPEG much larger than the crop is decoded reduced (pipeline.images,
  `images.reduction_for_scale`): at least one decoded pixel per crop pixel, results within the tolerance
  measured by bench/bench_face_stages.py.
- `prealigned`: the whole image is the face (RAF-DB aligned, FERPlus): a plain resize, recorded as a scale
  transform.
- `fan`: face-alignment's SFD detector from a local checkpoint (`fan_detector_checkpoint`), for GPU hosts.

Every box is clipped to its image; one with nothing left is `no_face` with its reason (no_given_box,
empty_box, box_outside_image), and a crop less than MIN_CROP_COVERAGE inside its image is `no_face`,
crop_mostly_padding: no mostly-padding crop is marked valid. Images are read by pipeline.images; models
are borrowed per call (pipeline.models.sharing), so shards may run in parallel threads.

Output, row for row with the input samples: the faces table (DESIGN faces.parquet: sample_id, status,
bbox [x, y, w, h] source pixels, score, detector, transform [6] 2x3 row-major, n_faces), crops [N, S, S, 3]
uint8 (zeros where status is no_face or unreadable), and quarantine rows for those two statuses.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from pipeline import geometry, images
from pipeline.assemble import by_key, quarantine_by_key, quarantine_rows, with_sample_ids
from pipeline.contract.crops import create_crop_store, write_valid_mask
from pipeline.contract.errors import BackendMissingError, ConfigError
from pipeline.contract.ranges import bounded
from pipeline.contract.registry import Registry
from pipeline.contract.tables import (
    CROPS_DIR,
    FACES,
    QuarantineRow,
    write_table,
    vector_type,
    vectors_to_arrow,
    vectors_to_numpy,
)
from pipeline.models import resolve_device
from pipeline.models.sharing import LockedModel
from pipeline.stages.base import Stage, register_stage
from pipeline.store.parts import Part, PartStore

log = logging.getLogger(__name__)

STAGE = "detect_align"
STAGE_VERSION = "1.1.0"  # 1.1: boxes clipped, padding-heavy crops rejected, EXIF and 16-bit images read right
USABLE_STATUSES = ("ok", "multi_face")
MIN_CROP_COVERAGE = 0.5   # a crop less than half inside its image is mostly padding: not a face crop
DEFAULT_DETECTOR = {"detect": "dlib", "given": "given", "prealigned": "prealigned"}   # by spec.alignment

FACES_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("status", pa.string()), ("bbox", vector_type(4)), ("score", pa.float32()),
    ("detector", pa.string()), ("transform", vector_type(6)), ("n_faces", pa.int32()),
])

BACKENDS: Registry[type] = Registry("detector (AlignConfig.detector)")
register_backend = BACKENDS.register


@dataclass(frozen=True)
class AlignConfig:
    """Detection and alignment parameters (all literal, all in the fingerprint)."""

    detector: str = "dlib"
    crop_size: int = bounded(256, 32, 4096)
    score_threshold: float = bounded(0.5, -10, 10)         # dlib HOG: it gives low-score false positives below ~0.5
    upsample: int = bounded(1, 0, 4)                    # dlib HOG pyramid upsampling (finds faces down to ~40 px)
    detect_max_side: int = bounded(640, 32, 16384)           # images are downscaled to this for the HOG pass only
    retry_rotations_deg: tuple[float, ...] = bounded((20.0, -20.0), -180, 180)
    refine_with_landmarks: bool = True    # align from dlib's 68 points on the kept box
    upright_passes: int = bounded(1, 0, 10)              # re-fit the points on the upright crop this many times
    use_given_landmarks: bool = True      # `given`: align from the dataset's points when present
    fan_detector_checkpoint: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        BACKENDS.get(self.detector)       # an unknown name raises ConfigError listing the registered ones
        if self.crop_size < 32:
            raise ConfigError(f"AlignConfig.crop_size must be at least 32, got {self.crop_size}")


@dataclass(frozen=True)
class FaceResult:
    """One sample's detection and alignment; `reason` is the quarantine reason when not usable."""

    status: str
    bbox: np.ndarray        # [4] x, y, w, h source pixels (nan when no face)
    score: float
    transform: np.ndarray   # [2, 3] (nan when no face)
    n_faces: int
    detail: str = ""
    reason: str = ""


def no_face(reason: str, detail: str, status: str = "no_face", n_faces: int = 0) -> FaceResult:
    return FaceResult(status, np.full(4, np.nan), float("nan"), np.full((2, 3), np.nan), n_faces, detail, reason)


def pick_face(boxes: np.ndarray, width: int, height: int) -> int:
    """Index of the largest, most central box among [F, 4] x, y, w, h boxes."""
    centres = boxes[:, :2] + 0.5 * boxes[:, 2:]                          # [F, 2]
    offset = np.linalg.norm(centres - np.array([width, height]) / 2.0, axis=1)
    half_diagonal = 0.5 * np.hypot(width, height)
    rank = boxes[:, 2] * boxes[:, 3] * np.clip(1.0 - offset / half_diagonal, 0.05, 1.0)
    return int(np.argmax(rank))


class FaceBackend:
    """One detector. `plan` answers from the row and the image size alone (no pixels) where it can."""

    needs_columns: tuple[str, ...] = ()
    decodes_reduced = False          # may the image be decoded reduced to the crop's resolution?

    @classmethod
    def check(cls, config: AlignConfig) -> None:
        """Raise ConfigError / BackendMissingError when this backend cannot run with config."""

    def plan(self, row: dict, width: int, height: int, config: AlignConfig) -> FaceResult | None:
        return None

    def detect(self, row: dict, image: np.ndarray, config: AlignConfig) -> FaceResult:
        height, width = image.shape[:2]
        result = self.plan(row, width, height, config)
        if result is None:   # a backend that plans from the row alone must plan every row
            raise TypeError(f"face backend {type(self).__name__} defines neither plan() for this row nor detect()")
        return result


def _check_dlib(refine: bool) -> None:
    from pipeline.models.dlib_models import HOG_DETECTORS, SHAPE_PREDICTORS

    HOG_DETECTORS.warm()
    if refine:
        SHAPE_PREDICTORS.warm()


def _align_found(image: np.ndarray, box: np.ndarray, config: AlignConfig,
                 to_view: np.ndarray | None, view: np.ndarray) -> np.ndarray | None:
    """Transform for a box found in `view` (the image, or the image rotated by to_view); None if unusable."""
    from pipeline.models import dlib_models

    if config.refine_with_landmarks:
        points = dlib_models.predict_68(view, dlib_models.rectangle(box))      # [68, 2] view pixels
        if to_view is not None:
            points = geometry.map_points(points, geometry.invert_transform(to_view)).astype(np.float64)
        return dlib_models.upright_refine(image, points, config.crop_size, config.upright_passes)
    if to_view is None:
        height, width = image.shape[:2]
        return geometry.transform_from_box(geometry.clip_box(box, width, height), config.crop_size)
    return None  # a box found in a rotated view needs landmarks to come back upright


@register_backend("dlib")
class DlibDetector(FaceBackend):
    """dlib HOG detection with rotated retries; alignment from dlib's 68 points on the kept box."""

    @classmethod
    def check(cls, config: AlignConfig) -> None:
        _check_dlib(config.refine_with_landmarks)

    def detect(self, row: dict, image: np.ndarray, config: AlignConfig) -> FaceResult:
        from pipeline.models import dlib_models

        height, width = image.shape[:2]
        for degrees in (0.0, *config.retry_rotations_deg):
            view, to_view = (image, None) if degrees == 0.0 else dlib_models.rotated(image, degrees)
            boxes, scores = dlib_models.hog_boxes(view, config.upsample, config.detect_max_side,
                                                  config.score_threshold)
            if len(boxes) == 0:
                continue
            best = pick_face(boxes, width, height)
            box, score = boxes[best], float(scores[best])
            transform = _align_found(image, box, config, to_view, view)
            if transform is None:
                continue
            if to_view is not None:  # report the box in source pixels: bounding box of its rotated corners
                corners = np.array([[box[0], box[1]], [box[0] + box[2], box[1]], [box[0], box[1] + box[3]],
                                    [box[0] + box[2], box[1] + box[3]]])
                back = geometry.map_points(corners, geometry.invert_transform(to_view))
                box = np.concatenate([back.min(axis=0), back.max(axis=0) - back.min(axis=0)])
            status = "multi_face" if len(boxes) > 1 else "ok"
            return FaceResult(status, box.astype(np.float64), score, transform, len(boxes),
                              f"rotated {degrees:+.0f} deg" if degrees else "")
        return no_face("no_face", f"dlib HOG: nothing scored >= {config.score_threshold}")


@register_backend("given")
class GivenBoxes(FaceBackend):
    """The dataset's own box (clipped to the image), aligned from its own points when present and wanted."""

    needs_columns = ("given_bbox",)
    decodes_reduced = True

    def plan(self, row: dict, width: int, height: int, config: AlignConfig) -> FaceResult:
        box = row.get("given_bbox")
        if box is None or not np.all(np.isfinite(np.asarray(box, dtype=np.float64))):
            return no_face("no_given_box", "no given box (null or non-finite given_bbox)")
        box = np.asarray(box, dtype=np.float64)
        if box[2] <= 0 or box[3] <= 0:
            return no_face("empty_box", f"given box has no area: {box.tolist()}")
        clipped = geometry.clip_box(box, width, height)
        if not (clipped[2] > 0 and clipped[3] > 0):
            return no_face("box_outside_image", f"given box {box.tolist()} lies outside the {width}x{height} image")
        points = row.get("given_landmarks")
        if config.use_given_landmarks and points is not None:
            points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            if np.all(np.isfinite(points)) and len(points) in (68, 19):
                return FaceResult("ok", clipped, 1.0, geometry.transform_from_points(points, config.crop_size), 1)
        return FaceResult("ok", clipped, 1.0, geometry.transform_from_box(clipped, config.crop_size), 1)


@register_backend("prealigned")
class Prealigned(FaceBackend):
    """The whole image is the face: a resize."""

    def plan(self, row: dict, width: int, height: int, config: AlignConfig) -> FaceResult:
        transform = geometry.resize_transform(width, height, config.crop_size)
        return FaceResult("ok", np.array([0.0, 0.0, width, height]), 1.0, transform, 1)


def _new_sfd(checkpoint: str, device: str):
    from face_alignment.detection.sfd.sfd_detector import SFDDetector

    try:
        return SFDDetector(device=device, path_to_detector=checkpoint)
    except Exception as exc:
        raise ConfigError(f"AlignConfig.fan_detector_checkpoint {checkpoint!r} cannot be loaded as face-alignment's "
                          f"SFD (s3fd) weights: {type(exc).__name__}: {exc}") from exc


@register_backend("fan")
class FanDetector(FaceBackend):
    """face-alignment's SFD boxes (score >= threshold), the largest-central kept, aligned from dlib's points."""

    @classmethod
    def check(cls, config: AlignConfig) -> None:
        checkpoint = config.fan_detector_checkpoint
        if not checkpoint:
            raise BackendMissingError("detector 'fan' needs AlignConfig.fan_detector_checkpoint: the path of "
                                      "face-alignment's SFD weights (s3fd-619a316812.pth)")
        if not Path(checkpoint).is_file():
            raise BackendMissingError(f"AlignConfig.fan_detector_checkpoint {checkpoint!r} is not a file")
        from pipeline.contract.errors import require_package

        require_package("face_alignment", "face-alignment", "make setup-gpu")
        SFD_DETECTORS.get(str(checkpoint), resolve_device(config.device))
        if config.refine_with_landmarks:
            _check_dlib(False)

    def detect(self, row: dict, image: np.ndarray, config: AlignConfig) -> FaceResult:
        with SFD_DETECTORS.borrow(str(config.fan_detector_checkpoint), resolve_device(config.device)) as sfd:
            found = sfd.detect_from_image(image[..., ::-1].copy())
        found = np.asarray(found, dtype=np.float64).reshape(-1, 5)
        found = found[found[:, 4] >= config.score_threshold]
        if len(found) == 0:
            return no_face("no_face", f"SFD: nothing scored >= {config.score_threshold}")
        boxes = np.column_stack([found[:, :2], found[:, 2:4] - found[:, :2]])    # [F, 4] x, y, w, h
        best = pick_face(boxes, image.shape[1], image.shape[0])
        transform = _align_found(image, boxes[best], config, None, image)
        status = "multi_face" if len(boxes) > 1 else "ok"
        return FaceResult(status, boxes[best], float(found[best, 4]), transform, len(boxes))


SFD_DETECTORS = LockedModel("face-alignment SFD detector", _new_sfd)
DETECTORS = BACKENDS.names()


def detect_dlib(image: np.ndarray, config: AlignConfig) -> FaceResult:
    """dlib HOG detection (with rotated retries) and alignment for one decoded image."""
    return DlibDetector().detect({}, image, config)


def _finish(result: FaceResult, width: int, height: int, size: int) -> FaceResult:
    """Clip the recorded box to the image; refuse a crop that is mostly padding."""
    if result.status not in USABLE_STATUSES:
        return result
    box = geometry.clip_box(result.bbox, width, height)
    if not (box[2] > 0 and box[3] > 0):
        return no_face("box_outside_image", f"box {np.round(result.bbox, 1).tolist()} lies outside the "
                                            f"{width}x{height} image")
    coverage = geometry.crop_coverage(result.transform, width, height, size)
    if coverage < MIN_CROP_COVERAGE:
        return no_face("crop_mostly_padding", f"only {coverage:.0%} of the crop lies inside the {width}x{height} "
                                              f"image (at least {MIN_CROP_COVERAGE:.0%} needed)")
    return replace(result, bbox=box)


def detect_one(row: dict, image_root: Path, config: AlignConfig,
               backend: object | None = None) -> tuple[FaceResult, np.ndarray | None]:
    """Read, detect and align one sample; never raises for a bad image (status and reason say what happened)."""
    backend = backend or BACKENDS.get(config.detector)()
    path = Path(image_root) / str(row["relpath"])
    try:
        with images.OpenImage(path) as handle:
            width, height = handle.size
            planned = backend.plan(row, width, height, config)
            reduce = 1
            if planned is not None and planned.status in USABLE_STATUSES and backend.decodes_reduced:
                reduce = images.reduction_for_scale(geometry.transform_scale(planned.transform))
            image, reduction = handle.rgb(reduce)
    except images.ImageReadError as exc:
        return no_face("unreadable_image", f"{exc.reason}: {exc.detail}", status="unreadable"), None
    result = planned if planned is not None else backend.detect(row, image, config)
    result = _finish(result, width, height, config.crop_size)
    if result.status not in USABLE_STATUSES:
        return result, None
    to_crop = result.transform if reduction == 1 else geometry.compose(result.transform,
                                                                    images.reduced_to_full(reduction))
    return result, geometry.warp_crop(image, to_crop, config.crop_size)


def _shard_rows(samples: pa.Table) -> list[dict]:
    """Rows as dicts, with vector columns as numpy arrays (None where null)."""
    columns = [c for c in ("sample_id", "relpath", "given_bbox", "given_landmarks") if c in samples.column_names]
    rows = [{"sample_id": int(s)} for s in samples.column("sample_id").to_pylist()]
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
    transforms = np.stack([geometry.transform_to_row(r.transform) for r in results]) if results else np.zeros((0, 6))
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
    """Fail at once (before any image) when the chosen detector cannot run here: packages, checkpoints and
    models are loaded now, and any problem raises ConfigError / BackendMissingError naming the key."""
    BACKENDS.get(config.detector).check(config)


def detect_align_shard(samples: pa.Table, image_root: Path, config: AlignConfig,
                       progress: bool = True) -> tuple[pa.Table, np.ndarray, list[QuarantineRow]]:
    """Detect and align every sample of a shard.

    Returns (faces, crops, quarantine): faces has one row per input row, in input order; crops is
    [N, S, S, 3] uint8 in the same order, zero where status is `no_face` or `unreadable` (those rows also
    get a quarantine row with the reason). `multi_face` rows carry a real crop of the kept face and are not
    quarantined. Safe to call from several threads at once.
    """
    check_backend(config)
    backend_class = BACKENDS.get(config.detector)
    missing = [c for c in backend_class.needs_columns if c not in samples.column_names]
    if missing:
        raise ConfigError(f"detector {config.detector!r} needs a samples table with the column(s) {missing}; "
                          "use detector 'dlib' for datasets without boxes")
    backend = backend_class()
    rows = _shard_rows(samples)
    size = config.crop_size
    crops = np.zeros((len(rows), size, size, 3), dtype=np.uint8)      # [N, S, S, 3]
    results: list[FaceResult] = []
    quarantine: list[QuarantineRow] = []
    for i, row in enumerate(tqdm(rows, desc=f"detect+align ({config.detector})", unit="img",
                                 disable=not progress, leave=False)):
        try:
            result, crop = detect_one(row, image_root, config, backend)
        except (BackendMissingError, ConfigError):
            raise                               # configuration, not this image: never stored per image
        except Exception as exc:  # noqa: BLE001 - a backend failing on one image must not stop the shard
            log.warning("detector %s failed on %s: %s", config.detector, row.get("relpath"), exc)
            result, crop = no_face("backend_error", f"{type(exc).__name__}: {exc}"), None
        results.append(result)
        if crop is not None:
            crops[i] = crop
        else:
            quarantine.append(QuarantineRow(relpath=str(row.get("relpath", "")), stage=STAGE, reason=result.reason,
                                            detail=result.detail, sample_id=row["sample_id"]))
    sample_ids = np.array([r["sample_id"] for r in rows], dtype=np.int64)
    return faces_table(sample_ids, results, config.detector), crops, quarantine




# --- the registered stage: config, shard part, assembly -------------------------------------------------

def resolve_config(fields: dict, spec) -> AlignConfig:
    """The `align` section over AlignConfig; the detector defaults to what the dataset spec's alignment needs."""
    from pipeline.contract.config import build_dataclass

    return build_dataclass(AlignConfig, {"detector": DEFAULT_DETECTOR[spec.alignment], **fields}, "align")


def faces_part(shard: pa.Table, upstream: dict[str, PartStore], config: AlignConfig, image_root: Path) -> Part:
    """Detect and align one shard; crops are kept for every row (zeros where no face)."""
    faces, crops, quarantine = detect_align_shard(shard.drop_columns(["key"]), image_root, config, progress=False)
    keys = shard.column("key").to_pylist()
    return Part(by_key(faces, keys), quarantine_by_key(quarantine, shard), {"crops": crops})


def assemble_faces(store: PartStore, samples: pa.Table, keys: list[str], usable, out_dir: Path,
                   config: AlignConfig) -> tuple[list[QuarantineRow], np.ndarray]:
    """faces.parquet and crops/ for every sample; returns the quarantine and the usable-face mask [N]."""
    rows, quarantine = store.gather(list(dict.fromkeys(keys)))
    faces = with_sample_ids(rows, samples, keys)
    write_table(out_dir / FACES, faces)
    usable = np.isin(faces.column("status").to_numpy(zero_copy_only=False), USABLE_STATUSES)
    crops = create_crop_store(out_dir / CROPS_DIR, samples.num_rows, config.crop_size)
    store.gather_array("crops", keys, out=crops)
    crops.flush()
    write_valid_mask(out_dir / CROPS_DIR, usable)
    return quarantine_rows(quarantine, samples, keys, "faces"), usable


def _report() -> list:
    from pipeline.report import sections

    return [("faces", "Face detection", sections.faces_section)]


PREPARE_STAGE = register_stage(Stage(
    name="faces", version=STAGE_VERSION, config=AlignConfig, section="align", per_image=True,
    writes=(FACES, CROPS_DIR), resolve=resolve_config, check=check_backend, part=faces_part,
    assemble=assemble_faces, report=_report))
