"""What each synthetic expression is: action-unit recipes, their landmark moves, and valence/arousal.

Each class is a fixed combination of action units; each AU moves the 68-point mesh by a fixed field
scaled by its intensity, so the stored AU intensities are the ones applied. A share of samples blends
two expressions; the weights are the sample's true label distribution and its valence/arousal is the
weighted mix of the classes' circumplex positions, each scaled by the expression intensity.

Valence/arousal per class (`CLASS_VA`). Angles follow the circular order of Russell's circumplex
(J. A. Russell, "A circumplex model of affect", J. Pers. Soc. Psychol. 39(6), 1980): pleasure 0 deg,
excitement 45, arousal 90, distress 135, displeasure 180, depression 225, sleepiness 270, relaxation
315 (the paper's eight reference concepts, valence on x, arousal on y). Each class sits at the angle of
the nearest of Russell's scaled adjectives (happy 8, astonished 70, angry 99, afraid 117, sad 208 deg);
disgust and contempt are not among his 28 words and are placed here, inside the displeasure quadrant.
A full expression lies at radius 0.8 (AffectNet's -1..1 scale); neutral is the origin.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pipeline.contract.classes import AU_INTENSITY_NAMES, CANONICAL_CLASSES

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
CLASS_AUS: dict[str, dict[str, float]] = {
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
TEETH_CLASS = "happiness"  # teeth show only where this class leads

_RADIUS = 0.8  # a full expression's distance from neutral on the circumplex
_ANGLE_DEG: dict[str, float] = {  # see the module docstring for the sources
    "happiness": 8.0, "surprise": 70.0, "anger": 99.0, "fear": 117.0, "disgust": 150.0,
    "contempt": 170.0, "sadness": 208.0,
}
CLASS_VA: dict[str, tuple[float, float]] = {"neutral": (0.0, 0.0)} | {
    name: (_RADIUS * float(np.cos(np.deg2rad(a))), _RADIUS * float(np.sin(np.deg2rad(a))))
    for name, a in _ANGLE_DEG.items()}


@dataclass(frozen=True)
class Expression:
    """The expression drawn for one sample."""

    label: int
    distribution: np.ndarray  # [C] float32, sums to 1
    intensity: float
    au_intensity: np.ndarray  # [17] float32, 0..5
    field: np.ndarray  # [68, 2] landmark displacement, face units
    teeth: bool
    valence: float
    arousal: float


@functools.cache
def _au_field(au: str, side: tuple[int, ...], unilateral: bool) -> np.ndarray:
    """Landmark displacement [68, 2] (face units) of one AU at intensity 5; side: [68] -1/0/+1."""
    sides = np.array(side)  # [68]
    field = np.zeros((68, 2))  # [68, 2]
    for idx, dx, dy in _AU_MOVES[au]:
        for i in idx:
            field[i] += (dx * sides[i], dy)
    if unilateral:
        field[sides <= 0] = 0.0
    field.flags.writeable = False  # cached
    return field


def class_weights(num_classes: int, label: int, rng: np.random.Generator, blend_share: float) -> np.ndarray:
    """[C] the label distribution: one-hot, or with probability blend_share a blend of two classes."""
    weights = np.zeros(num_classes)  # [C]
    weights[label] = 1.0
    if rng.random() < blend_share:
        other = int((label + rng.integers(1, num_classes)) % num_classes)
        weights[label] = rng.uniform(0.55, 0.85)
        weights[other] = 1.0 - weights[label]
    return weights


def expression(weights: np.ndarray, intensity: float, side: np.ndarray) -> Expression:
    """AU intensities, landmark field and valence/arousal of a class blend at one intensity (0..1)."""
    au = np.zeros(len(AU_INTENSITY_NAMES))  # [17]
    field = np.zeros((68, 2))  # [68, 2]
    va = np.zeros(2)  # [2]
    key = tuple(int(s) for s in side)
    for k in np.flatnonzero(weights):
        name = CANONICAL_CLASSES[k]
        va += weights[k] * intensity * np.array(CLASS_VA[name])
        for au_name, w in CLASS_AUS[name].items():
            level = 5.0 * intensity * weights[k] * w
            au[AU_INTENSITY_NAMES.index(au_name)] += level
            field += _au_field(au_name, key, name in _UNILATERAL) * (level / 5.0)
    label = int(np.argmax(weights))
    teeth = CANONICAL_CLASSES[label] == TEETH_CLASS
    return Expression(label, weights.astype(np.float32), intensity, au.astype(np.float32), field, teeth,
                      float(va[0]), float(va[1]))


def wrinkle_levels(expr: Expression, side: np.ndarray) -> dict[str, float]:
    """How deep (0..1) each furrow of render.paint_wrinkles is drawn: skin cues that go with the AUs.

    Forehead lines with the brow raisers (AU01/02), the glabella furrow with the brow lowerer (AU04),
    nose-bridge wrinkles with the nose wrinkler (AU09), and each nasolabial fold with its lip corner's
    pull up and out (AU12 at full intensity gives 1; so a one-sided smile deepens one fold) and with
    the upper-lip raiser (AU10).
    """
    au = dict(zip(AU_INTENSITY_NAMES, (expr.au_intensity / 5.0).tolist()))
    levels = {"forehead": (au["AU01"] + au["AU02"]) / 2, "glabella": au["AU04"], "nose": au["AU09"]}
    for name, corner in (("fold_left", 48), ("fold_right", 54)):
        pull = -expr.field[corner, 1] + expr.field[corner, 0] * side[corner]  # up and outwards, face units
        levels[name] = float(np.clip(pull / 0.19 + 0.6 * au["AU10"], 0.0, 1.0))
    return levels
