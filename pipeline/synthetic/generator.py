"""Synthetic faces with a known expression, 68 landmarks, action units, valence/arousal and label distribution.

Two public-domain photographs (scikit-image's astronaut, matplotlib's Grace Hopper; see
pipeline.synthetic.reference) are warped piecewise-affinely along the iBUG 68-point mesh; their
reference points are dlib's (detector and 68-point predictor), stored in the package. An identity
is a photo, a large anthropometric shape morph and a skin tint (pipeline.synthetic.shape); an
expression is a set of action units moving the mesh, at an intensity from subtle to full, sometimes a
blend of two classes whose weights are the true label distribution, with a valence/arousal from the
classes' circumplex positions (pipeline.synthetic.expressions). Every class but happiness gets lips
painted in, with a dark cavity when open; happiness shows teeth (the astronaut's own, painted for a
closed-mouthed photo). The AUs also darken the skin furrows they make (forehead lines, glabella, nose
wrinkles, nasolabial folds): appearance cues a pixel model can learn that landmarks do not carry. In-plane rotation (normal, sigma = limit / 3, clipped at the limit), scale,
shift, lighting, colour and background vary per sample. A sample depends only on (config, index),
so any one can be regenerated alone, in any order or process.

Design limits found by measurement (dlib HOG, upsample 0): its frontal filter weakens between 10
and 16 degrees of roll and on strongly lowered brows, dropped jaws and depressed lip corners, so
those moves are moderate and the astronaut's neutral brows sit slightly high. A stylised,
few-photo set for checking the pipeline and the methods, not a measure of real-world accuracy.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.contract.errors import ConfigError
from pipeline.contract.ranges import SEED_MAX, bounded
from pipeline.synthetic.expressions import class_weights, expression, wrinkle_levels
from pipeline.synthetic.reference import num_references, reference
from pipeline.synthetic.render import (
    apply_affine,
    background,
    head_polygons,
    jaw_shadow,
    paint_brows,
    paint_mouth,
    paint_wrinkles,
    shade,
    soft_mask,
    warp_mesh,
)
from pipeline.synthetic.shape import identity_morph, untangle

log = logging.getLogger(__name__)

# 2.0: two source photos, large identity shapes, subtle-to-full intensity, valence/arousal.
SYNTHETIC_VERSION = "2.0"


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Every sample depends only on this config and its index."""

    n: int = bounded(200, 0, 1_000_000)   # at most 1M faces (AffectNet has 290K)
    size: int = bounded(256, 64, 4096)  # output image side, square RGB uint8
    seed: int = bounded(0, 0, SEED_MAX)
    num_classes: int = bounded(7, 7, 8)  # 7 or 8 (8 adds contempt)
    blend_share: float = bounded(0.2, 0, 1)  # share of samples blending two expressions
    min_intensity: float = bounded(0.4, 0, 1)  # subtle ...
    max_intensity: float = bounded(1.0, 0, 1)  # ... to full
    max_rotation_deg: float = bounded(20.0, 0, 45)
    num_identities: int = bounded(16, 1, 100_000)  # identity i uses source photo i % num_sources
    num_sources: int = bounded(2, 1, 64)  # source photos used (1: the astronaut only; at most the bundled ones)
    identity_strength: float = bounded(1.0, 0, 10)  # scales the identity shape morphs
    min_eye_distance: float = bounded(0.20, 0.1, 0.5)  # outer eye-corner distance / size (0.20 x 256 = 51 px)
    max_eye_distance: float = bounded(0.26, 0.1, 0.5)
    max_shift: float = bounded(0.05, 0, 0.5)  # face-centre shift / size
    lighting: float = bounded(0.35, 0, 1)  # strength of the directional shading
    noise: float = bounded(3.0, 0, 255)  # max pixel noise sigma
    wrinkles: bool = True  # draw the skin furrows that go with the AUs (appearance, not landmark, cues)
    validation: bool = False  # also a 'val' split: every fifth block of classes, offset 3 (train keeps 60%)

    def __post_init__(self) -> None:
        checks = {
            "n >= 0": self.n >= 0, "size >= 64": self.size >= 64,
            "num_classes in (7, 8)": self.num_classes in (7, 8),
            "0 <= blend_share <= 1": 0 <= self.blend_share <= 1,
            "0 <= min_intensity <= max_intensity <= 1": 0 <= self.min_intensity <= self.max_intensity <= 1,
            "0 <= max_rotation_deg <= 45": 0 <= self.max_rotation_deg <= 45,
            "num_identities >= 1": self.num_identities >= 1,
            f"1 <= num_sources <= {num_references()}": 1 <= self.num_sources <= num_references(),
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
    valence: float  # -1..1, the classes' circumplex positions mixed by the distribution, x intensity
    arousal: float  # -1..1, likewise
    source: str  # the source photo's name


def _label(config: SyntheticConfig, index: int) -> int:
    """Balanced: each block of `num_classes` indices holds every class once, in a seeded order."""
    c = config.num_classes
    block, pos = divmod(index, c)
    return int(np.random.default_rng([config.seed, 2_000_003, block]).permutation(c)[pos])


def _placement(config: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Face units -> output pixels [2, 3] (scale, in-plane rotation, shift) and the rotation in degrees."""
    size = config.size
    scale = size * rng.uniform(config.min_eye_distance, config.max_eye_distance)
    limit = config.max_rotation_deg  # roll mostly near upright, as in photos: normal, clipped at the limit
    rotation = float(np.clip(rng.normal(0.0, limit / 4.0), -limit, limit))
    centre = size * (np.array([0.5, 0.42]) + rng.uniform(-config.max_shift, config.max_shift, 2))  # [2]
    a = np.deg2rad(rotation)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])  # [2, 2]
    return np.concatenate([rot, centre[:, None]], 1), rotation  # [2, 3]


def _finish(config: SyntheticConfig, warped: np.ndarray, placement: np.ndarray, gain: np.ndarray,
            outlines: tuple[np.ndarray, ...], rng: np.random.Generator) -> np.ndarray:
    """Light the face layer, put it on a backdrop, add noise and an exposure curve: [H, W, 3] uint8."""
    import cv2

    scale = float(np.linalg.norm(placement[:, 0]))
    fore = shade(warped, gain, config.size, config.lighting, rng)  # [H, W, 3]
    alpha = soft_mask(config.size, head_polygons(placement, outlines), 0.05 * scale)[..., None]  # [H, W, 1]
    image = fore * alpha + background(config.size, rng) * (1 - alpha)  # [H, W, 3]
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0, config.noise)
    gamma = 255.0 * (np.arange(256) / 255.0) ** rng.uniform(0.85, 1.2)  # [256] exposure curve
    return cv2.LUT(np.clip(image + 0.5, 0, 255).astype(np.uint8), np.round(gamma).astype(np.uint8))


def generate_sample(config: SyntheticConfig, index: int) -> SyntheticSample:
    """Generate sample `index` of `config`; it depends only on (config, index)."""
    if not 0 <= index < config.n:
        raise ConfigError(f"synthetic sample index {index} outside 0..{config.n - 1}")
    rng = np.random.default_rng([config.seed, index])
    weights = class_weights(config.num_classes, _label(config, index), rng, config.blend_share)
    intensity = float(rng.uniform(config.min_intensity, config.max_intensity))
    identity = int(rng.integers(config.num_identities))
    ref = reference(identity % config.num_sources)
    expr = expression(weights, intensity, ref.side)
    offset, gain = identity_morph(ref.neutral, config.seed, identity, config.identity_strength)
    face = untangle(ref.neutral + offset + expr.field)  # [68, 2] face units
    placement, rotation = _placement(config, rng)
    dst = apply_affine(placement, np.concatenate([face, ref.points[68:]]))  # [97, 2] output pixels
    inverse = np.linalg.inv(np.vstack([placement, [0, 0, 1]]))  # [3, 3]
    fallback = (np.vstack([ref.to_image, [0, 0, 1]]) @ inverse)[:2]  # [2, 3] output -> photo
    warped = warp_mesh(ref.image, ref.pixels, dst, ref.triangles, config.size, fallback).astype(np.float32)
    marks = dst[:68]  # [68, 2]
    scale = float(np.linalg.norm(placement[:, 0]))
    if ref.jaw_shadow:
        warped = jaw_shadow(warped, marks, scale, ref.jaw_shadow)
    if ref.brow_paint:
        warped = paint_brows(warped, marks, scale, ref.brow_paint)
    if config.wrinkles:
        warped = paint_wrinkles(warped, marks, scale, wrinkle_levels(expr, ref.side))
    if not (expr.teeth and ref.has_teeth):
        gap = float(np.mean(face[[67, 66, 65], 1] - face[[61, 62, 63], 1]))
        warped = paint_mouth(warped, marks, gap, scale, ref.lip_colour, teeth=expr.teeth)
    image = _finish(config, warped, placement, gain, ref.outlines, rng)
    return SyntheticSample(
        index=index, image=image, label=expr.label, distribution=expr.distribution,
        landmarks=marks.astype(np.float32), au_intensity=expr.au_intensity, intensity=expr.intensity,
        identity=identity, rotation_deg=rotation, valence=expr.valence, arousal=expr.arousal, source=ref.name)


def generate(config: SyntheticConfig) -> Iterator[SyntheticSample]:
    """All `config.n` samples in index order."""
    for index in range(config.n):
        yield generate_sample(config, index)


# Options added after 2.0 whose default leaves every image, split and version id as they were: left out of
# `config_params` at their default, so a version prepared without them keeps its id.
DEFAULT_OMITTED = {"validation": False}


def config_params(config: SyntheticConfig) -> dict:
    """The config as a dict for fingerprints and scan parameters (DEFAULT_OMITTED fields left out at default)."""
    params = asdict(config)
    for key, default in DEFAULT_OMITTED.items():
        if params.get(key) == default:
            params.pop(key)
    return params


def split_of(config: SyntheticConfig, index: int) -> str:
    """'test' for every fifth block of classes (20%, balanced per class), else 'train'.

    With `validation`, the block before each test block is 'val' (20%, balanced per class, clean labels
    like test: the noise stage flips train labels only), for choices a method makes after training.
    """
    block = (index // config.num_classes) % 5
    if block == 4:
        return "test"
    return "val" if config.validation and block == 3 else "train"
