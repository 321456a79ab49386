"""Synthetic faces with a known expression, 68 landmarks, action units and label distribution.

scikit-image's public-domain astronaut face is warped piecewise-affinely along the iBUG 68-point
mesh; its reference points come from dlib's detector and 68-point predictor, run once per process.
Each class is a fixed combination of action units; each AU moves the mesh by a fixed field scaled
by its intensity, so the stored AU intensities are the ones applied (only crossing lips and
closing eyelids are clamped). The source smiles with teeth: its mouth is redrawn closed for the
neutral shape, and every class but happiness gets lips painted in, with a dark cavity when open.
Identities are shape morphs plus a skin tint; in-plane rotation (normal, sigma = limit / 3, clipped
at the limit), scale, shift, lighting, colour and background vary per sample. A share of samples
blends two expressions; the weights are the sample's true label distribution. A sample depends
only on (config, index), so any one can be regenerated alone, in any order or process.

Design limits found by measurement (dlib HOG, upsample 0): its frontal filter weakens between 10
and 16 degrees of roll and on strongly lowered brows, dropped jaws and depressed lip corners, so
those moves are moderate and neutral brows sit slightly high. A stylised, few-identity set for
checking the pipeline and the methods, not a measure of real-world accuracy.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.contract.classes import AU_INTENSITY_NAMES, CANONICAL_CLASSES
from pipeline.contract.errors import ConfigError, DataError
from pipeline.synthetic.render import (
    apply_affine,
    background,
    head_polygons,
    paint_mouth,
    shade,
    soft_mask,
    warp_mesh,
)

log = logging.getLogger(__name__)

SYNTHETIC_VERSION = "1.0"

# Landmark moves at full AU intensity (5 on the 0..5 scale) in face units: outer eye-corner distance
# is 1, dx points away from the face midline, dy points down. AU -> ((points, dx, dy), ...).
_Move = tuple[tuple[int, ...], float, float]
_AU_MOVES: dict[str, tuple[_Move, ...]] = {
    "AU01": (((21, 22), 0, -.16), ((20, 23), 0, -.12), ((19, 24), 0, -.06), ((18, 25), 0, -.02)),
    "AU02": (((17, 26), 0, -.16), ((18, 25), 0, -.14), ((19, 24), 0, -.09), ((20, 23), 0, -.04)),
    "AU04": (((21, 22), -.06, .09), ((20, 23), -.04, .08), ((19, 24), -.02, .065), ((18, 25), 0, .05),
             ((17, 26), 0, .03), ((37, 38, 43, 44), 0, .01)),
    "AU05": (((37, 38, 43, 44), 0, -.045), ((36, 39, 42, 45), 0, -.007)),
    "AU06": (((40, 41, 46, 47), 0, -.035), ((48, 54), 0, -.02)),
    "AU07": (((40, 41, 46, 47), 0, -.03), ((37, 38, 43, 44), 0, .01)),
    "AU09": (((31, 35), .012, -.032), ((32, 33, 34), 0, -.032), ((30,), 0, -.016), ((21, 22), -.012, .02),
             ((20, 23), 0, .01), ((49, 50, 51, 52, 53), 0, -.024), ((61, 62, 63), 0, -.012)),
    "AU10": (((50, 51, 52), 0, -.09), ((49, 53), 0, -.08), ((61, 62, 63), 0, -.08), ((48, 54), 0, -.02),
             ((60, 64), 0, -.02)),
    "AU12": (((48, 54), .10, -.09), ((60, 64), .09, -.08), ((49, 53, 55, 59), .05, -.04),
             ((61, 63, 65, 67), .03, -.02), ((50, 52, 56, 58), .02, -.015)),
    "AU14": (((48, 54), .05, -.01), ((60, 64), .05, -.01), ((49, 53, 55, 59), .02, 0)),
    "AU15": (((48, 54), 0, .045), ((60, 64), 0, .04), ((55, 59), 0, .024), ((49, 53), 0, .012),
             ((56, 58), 0, .012)),
    "AU17": (((56, 57, 58), 0, -.05), ((65, 66, 67), 0, -.03), ((55, 59), 0, -.03), ((7, 8, 9), 0, -.04),
             ((50, 51, 52), 0, -.015)),
    "AU20": (((48, 54), .12, .03), ((60, 64), .11, .03), ((49, 53, 55, 59), .06, .01),
             ((61, 63, 65, 67), .04, .01)),
    "AU23": (((48, 54), -.05, 0), ((60, 64), -.04, 0), ((49, 53), -.03, .02), ((50, 51, 52), 0, .03),
             ((55, 59), -.03, -.02), ((56, 57, 58), 0, -.035)),
    "AU25": (((65, 66, 67), 0, .10), ((55, 56, 57, 58, 59), 0, .08), ((61, 62, 63), 0, -.01)),
    "AU26": (((65, 66, 67), 0, .072), ((56, 57, 58), 0, .08), ((55, 59), 0, .056),
             ((48, 54, 60, 64), -.012, .024), ((8,), 0, .08), ((7, 9), 0, .072), ((6, 10), 0, .056),
             ((5, 11), 0, .04), ((4, 12), 0, .02), ((3, 13), 0, .008)),
    "AU45": (),
}
# Each class as AU weights (intensity 1.0 and weight 1.0 give AU intensity 5).
_CLASS_AUS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happiness": {"AU06": .8, "AU12": 1.0, "AU25": 1.0},
    "sadness": {"AU01": 1.0, "AU04": .6, "AU15": 1.0, "AU17": .5},
    "surprise": {"AU01": 1.0, "AU02": 1.0, "AU05": 1.0, "AU25": .8, "AU26": 1.0},
    "fear": {"AU01": 1.0, "AU02": .6, "AU04": .8, "AU05": 1.0, "AU20": 1.0, "AU25": 1.0, "AU26": .4},
    "disgust": {"AU09": 1.0, "AU10": 1.0, "AU15": .6, "AU17": .5},
    "anger": {"AU04": 1.0, "AU05": .4, "AU07": 1.0, "AU23": 1.0},
    "contempt": {"AU12": .8, "AU14": .8},
}
_UNILATERAL = frozenset({"contempt"})  # its AUs move the image-right half of the face only
_TEETH_CLASS = "happiness"  # the source smile's teeth stay visible only where this class leads
_INNER_CORNERS = (60, 64)  # left out of the mesh: they make slivers at the mouth corners
_BROW_LIFT = 0.05  # neutral brows sit a little higher: lowered brows then stay clear of the eyes
_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # inner upper / inner lower lip, kept from crossing


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Every sample depends only on this config and its index."""

    n: int = 200
    size: int = 256  # output image side, square RGB uint8
    seed: int = 0
    num_classes: int = 7  # 7 or 8 (8 adds contempt)
    blend_share: float = 0.2  # share of samples blending two expressions
    min_intensity: float = 0.5
    max_intensity: float = 1.0
    max_rotation_deg: float = 20.0
    num_identities: int = 8
    identity_strength: float = 1.0  # scales the identity shape morphs
    min_eye_distance: float = 0.20  # outer eye-corner distance / size (0.20 x 256 = 51 px)
    max_eye_distance: float = 0.26
    max_shift: float = 0.05  # face-centre shift / size
    lighting: float = 0.35  # strength of the directional shading
    noise: float = 3.0  # max pixel noise sigma

    def __post_init__(self) -> None:
        checks = {
            "n >= 0": self.n >= 0, "size >= 64": self.size >= 64,
            "num_classes in (7, 8)": self.num_classes in (7, 8),
            "0 <= blend_share <= 1": 0 <= self.blend_share <= 1,
            "0 <= min_intensity <= max_intensity <= 1": 0 <= self.min_intensity <= self.max_intensity <= 1,
            "0 <= max_rotation_deg <= 45": 0 <= self.max_rotation_deg <= 45,
            "num_identities >= 1": self.num_identities >= 1,
            "0.1 <= min_eye_distance <= max_eye_distance <= 0.5":
                0.1 <= self.min_eye_distance <= self.max_eye_distance <= 0.5,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ConfigError(f"invalid SyntheticConfig {self}: need {', '.join(failed)}")


@dataclass(frozen=True)
class SyntheticSample:
    """One generated face and its ground truth."""

    index: int
    image: np.ndarray  # [size, size, 3] uint8 RGB
    label: int  # canonical class index (argmax of distribution)
    distribution: np.ndarray  # [num_classes] float32, sums to 1 (one-hot unless blended)
    landmarks: np.ndarray  # [68, 2] float32, (x, y) pixel-index coords (centres at integers, as dlib)
    au_intensity: np.ndarray  # [17] float32, 0..5 scale, order AU_INTENSITY_NAMES
    intensity: float  # expression intensity used (0..1)
    identity: int
    rotation_deg: float  # in-plane roll of the eye line; positive turns clockwise on screen


@dataclass(frozen=True)
class _Reference:
    """The astronaut source: image, its points in face units, the mesh and the face-to-image map."""

    image: np.ndarray  # [512, 512, 3] uint8 RGB
    points: np.ndarray  # [68 + E, 2] face units: 68 landmarks, then the extra mesh points
    pixels: np.ndarray  # [68 + E, 2] the same points in astronaut pixels (the warp's source)
    neutral: np.ndarray  # [68, 2] face units, the mouth redrawn closed
    side: np.ndarray  # [68] -1 image-left half, 0 midline, +1 image-right half
    triangles: np.ndarray  # [T, 3] int indices into points
    to_image: np.ndarray  # [2, 3] affine, face units -> astronaut pixels
    lip_colour: np.ndarray  # [3] float32 RGB, median of the source lips


def _extra_points() -> np.ndarray:
    """Mesh points beyond the landmarks (face units): forehead, a ring round the head, a far ring."""
    forehead = np.stack([np.linspace(-0.7, 0.7, 5), np.full(5, -0.75)], 1)  # [5, 2]
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)  # [16]
    ring = np.stack([1.3 * np.cos(t), 0.25 + 1.6 * np.sin(t)], 1)  # [16, 2]
    t8 = np.linspace(0, 2 * np.pi, 8, endpoint=False) + np.pi / 8  # [8]
    far = np.stack([9 * np.cos(t8), 0.25 + 9 * np.sin(t8)], 1)  # [8, 2]
    return np.concatenate([forehead, ring, far]).astype(np.float64)  # [29, 2]


def _astronaut_landmarks(image: np.ndarray) -> np.ndarray:
    """dlib's 68 points on the astronaut, from the best detection scoring above 0.5."""
    from pipeline.models.dlib_models import hog_detector, shape_predictor

    boxes, scores, _ = hog_detector().run(image, 0, 0.0)
    kept = [(s, b) for s, b in zip(scores, boxes) if s > 0.5]
    if not kept:
        raise DataError("dlib found no face in skimage.data.astronaut(); the synthetic source is unusable")
    box = max(kept, key=lambda sb: sb[0])[1]
    shape = shape_predictor()(image, box)
    return np.array([[p.x, p.y] for p in shape.parts()], np.float64)  # [68, 2]


def _crisp(image: np.ndarray) -> np.ndarray:
    """Local contrast (CLAHE on lightness) and an unsharp mask: warped faces stay clear to detectors."""
    import cv2

    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)  # [H, W, 3]
    lab[..., 0] = cv2.createCLAHE(2.0, (8, 8)).apply(lab[..., 0])
    rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB).astype(np.float32)  # [H, W, 3]
    sharp = rgb + (rgb - cv2.GaussianBlur(rgb, (0, 0), 3.0))
    return np.clip(np.round(sharp), 0, 255).astype(np.uint8)


def _neutral_mouth(points: np.ndarray) -> np.ndarray:
    """The astronaut's open smile redrawn as a closed, relaxed mouth (face units)."""
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
    return np.median(image[mask > 0], axis=0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _reference() -> _Reference:
    """Load the astronaut, locate its landmarks with dlib and build the mesh. Cached per process."""
    import skimage.data
    from scipy.spatial import Delaunay

    photo = np.ascontiguousarray(skimage.data.astronaut()[..., :3])  # [512, 512, 3]
    marks = _astronaut_landmarks(photo)  # [68, 2] pixels
    image = _crisp(photo)  # [512, 512, 3]
    origin = (marks[36] + marks[45]) / 2
    axis = marks[45] - marks[36]
    scale, angle = float(np.hypot(*axis)), float(np.arctan2(axis[1], axis[0]))
    c, s = np.cos(angle), np.sin(angle)
    to_image = np.array([[c * scale, -s * scale, origin[0]], [s * scale, c * scale, origin[1]]])  # [2, 3]
    rot = to_image[:, :2]  # [2, 2]
    face = (marks - origin) @ np.linalg.inv(rot).T  # [68, 2] face units
    points = np.concatenate([face, _extra_points()])  # [97, 2]
    neutral = face.copy()
    neutral[48:68] = _neutral_mouth(face)
    neutral[17:27, 1] -= _BROW_LIFT
    side = np.where(np.abs(neutral[:, 0]) < 0.03, 0, np.sign(neutral[:, 0])).astype(np.int64)  # [68]
    keep = np.array([i for i in range(len(points)) if i not in _INNER_CORNERS])  # [95]
    triangles = keep[Delaunay(points[keep]).simplices]  # [T, 3]
    log.debug("synthetic reference: eye distance %.1f px, %d triangles", scale, len(triangles))
    lip_colour = _lip_colour(image, marks)
    pixels = apply_affine(to_image, points)  # [97, 2]
    for array in (image, points, pixels, neutral, side, triangles, to_image, lip_colour):
        array.flags.writeable = False  # shared by every sample of the process
    return _Reference(image, points, pixels, neutral, side, triangles, to_image, lip_colour)


@functools.cache
def _au_field(au: str, unilateral: bool) -> np.ndarray:
    """Landmark displacement [68, 2] (face units) of one AU at intensity 5."""
    side = _reference().side
    field = np.zeros((68, 2))  # [68, 2]
    for idx, dx, dy in _AU_MOVES[au]:
        for i in idx:
            field[i] += (dx * side[i], dy)
    if unilateral:
        field[side <= 0] = 0.0
    field.flags.writeable = False  # cached
    return field


def _identity_morph(base: np.ndarray, seed: int, identity: int,
                    strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Shape offsets [68, 2] (face units) and an RGB skin gain [3] for one identity."""
    rng = np.random.default_rng([seed, 1_000_003, identity])
    u = rng.uniform(-1.0, 1.0, size=8) * strength  # [8]
    offset = np.zeros((68, 2))  # [68, 2]
    offset[0:17, 0] += base[0:17, 0] * 0.07 * u[0]  # jaw width
    lower = base[:, 1] > 0.3  # [68] below the nose bridge
    offset[lower, 1] += (base[lower, 1] - 0.3) * 0.05 * u[1]  # face length
    for eye in (slice(36, 42), slice(42, 48)):
        offset[eye] += (base[eye] - base[eye].mean(0)) * 0.08 * u[2]  # eye size
    offset[17:27, 1] += 0.025 * u[3]  # brow height
    offset[31:36, 0] += base[31:36, 0] * 0.10 * u[4]  # nose width
    offset[48:68, 0] += base[48:68, 0] * 0.05 * u[5]  # mouth width
    tone = 0.82 + 0.18 * u[6]
    gain = tone * np.array([1.0, 0.97 + 0.03 * u[7], 0.94 + 0.06 * u[7]])  # [3]
    return offset, gain


@dataclass(frozen=True)
class _Expression:
    """The expression drawn for one sample."""

    label: int
    distribution: np.ndarray  # [C] float32
    intensity: float
    au_intensity: np.ndarray  # [17] float32, 0..5
    field: np.ndarray  # [68, 2] landmark displacement, face units
    teeth: bool


def _expression(config: SyntheticConfig, index: int, rng: np.random.Generator) -> _Expression:
    """Class, blend weights, intensity and the AU intensities and landmark field they give."""
    c = config.num_classes
    block, pos = divmod(index, c)  # balanced: each block of c indices holds every class once
    label = int(np.random.default_rng([config.seed, 2_000_003, block]).permutation(c)[pos])
    weights = np.zeros(c)  # [C]
    weights[label] = 1.0
    if rng.random() < config.blend_share:
        other = int((label + rng.integers(1, c)) % c)
        weights[label] = rng.uniform(0.55, 0.85)
        weights[other] = 1.0 - weights[label]
    intensity = float(rng.uniform(config.min_intensity, config.max_intensity))
    au = np.zeros(len(AU_INTENSITY_NAMES))  # [17]
    field = np.zeros((68, 2))  # [68, 2]
    for k in np.flatnonzero(weights):
        name = CANONICAL_CLASSES[k]
        for au_name, w in _CLASS_AUS[name].items():
            level = 5.0 * intensity * weights[k] * w
            au[AU_INTENSITY_NAMES.index(au_name)] += level
            field += _au_field(au_name, name in _UNILATERAL) * (level / 5.0)
    teeth = CANONICAL_CLASSES[int(np.argmax(weights))] == _TEETH_CLASS
    return _Expression(label, weights.astype(np.float32), intensity, au.astype(np.float32), field, teeth)


def _untangle(points: np.ndarray) -> np.ndarray:
    """Keep lips from crossing and eyelids from closing past each other (face units, in place)."""
    for up, low in _LIP_PAIRS:
        if points[low, 1] < points[up, 1]:
            points[[up, low], 1] = points[[up, low], 1].mean()
        points[up - 11, 1] = min(points[up - 11, 1], points[up, 1] - 0.03)  # outer upper lip (50..52)
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        points[lower, 1] = max(points[lower, 1], points[upper, 1] + 0.05)
    return points


def _placement(config: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Face units -> output pixels [2, 3] (scale, in-plane rotation, shift) and the rotation in degrees."""
    size = config.size
    scale = size * rng.uniform(config.min_eye_distance, config.max_eye_distance)
    limit = config.max_rotation_deg  # roll mostly near upright, as in photos: normal, clipped at the limit
    rotation = float(np.clip(rng.normal(0.0, limit / 3.0), -limit, limit))
    centre = size * (np.array([0.5, 0.42]) + rng.uniform(-config.max_shift, config.max_shift, 2))  # [2]
    a = np.deg2rad(rotation)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # [2, 2]
    return np.concatenate([rot, centre[:, None]], 1), rotation  # [2, 3]


def generate_sample(config: SyntheticConfig, index: int) -> SyntheticSample:
    """Generate sample `index` of `config`; it depends only on (config, index)."""
    import cv2

    if not 0 <= index < config.n:
        raise ConfigError(f"synthetic sample index {index} outside 0..{config.n - 1}")
    ref = _reference()
    rng = np.random.default_rng([config.seed, index])
    expr = _expression(config, index, rng)
    identity = int(rng.integers(config.num_identities))
    offset, gain = _identity_morph(ref.neutral, config.seed, identity, config.identity_strength)
    face = _untangle(ref.neutral + offset + expr.field)  # [68, 2] face units
    placement, rotation = _placement(config, rng)
    dst = apply_affine(placement, np.concatenate([face, ref.points[68:]]))  # [97, 2] output pixels
    inverse = np.linalg.inv(np.vstack([placement, [0, 0, 1]]))  # [3, 3]
    fallback = (np.vstack([ref.to_image, [0, 0, 1]]) @ inverse)[:2]  # [2, 3] output -> astronaut
    warped = warp_mesh(ref.image, ref.pixels, dst, ref.triangles, config.size, fallback).astype(np.float32)
    scale = float(np.linalg.norm(placement[:, 0]))
    marks = dst[:68]  # [68, 2]
    if not expr.teeth:
        gap = float(np.mean(face[[67, 66, 65], 1] - face[[61, 62, 63], 1]))
        warped = paint_mouth(warped, marks, gap, scale, ref.lip_colour)
    fore = shade(warped, gain, config.size, config.lighting, rng)  # [H, W, 3]
    alpha = soft_mask(config.size, head_polygons(placement), 0.05 * scale)[..., None]  # [H, W, 1]
    image = fore * alpha + background(config.size, rng) * (1 - alpha)  # [H, W, 3]
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0, config.noise)
    gamma = 255.0 * (np.arange(256) / 255.0) ** rng.uniform(0.85, 1.2)  # [256] exposure curve
    image = cv2.LUT(np.clip(image + 0.5, 0, 255).astype(np.uint8), np.round(gamma).astype(np.uint8))
    return SyntheticSample(
        index=index, image=image, label=expr.label,
        distribution=expr.distribution, landmarks=marks.astype(np.float32), au_intensity=expr.au_intensity,
        intensity=expr.intensity, identity=identity, rotation_deg=rotation)


def generate(config: SyntheticConfig) -> Iterator[SyntheticSample]:
    """All `config.n` samples in index order."""
    for index in range(config.n):
        yield generate_sample(config, index)


def split_of(config: SyntheticConfig, index: int) -> str:
    """'test' for every fifth block of classes (20%, balanced per class), else 'train'."""
    return "test" if (index // config.num_classes) % 5 == 4 else "train"
