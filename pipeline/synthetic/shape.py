"""Identity face shapes of the synthetic set, and the clamps that keep a drawn shape valid.

An identity is a source photo plus a shape morph and a skin tint. The morph moves the 68 points by
twelve anthropometric modes (jaw width, face and chin length, eye size and height, brow height and
slant, nose width and length, mouth width, height and lip thickness), each drawn uniformly in
[-1, 1] per identity and scaled so that, at `strength` 1, the spread of face shapes across identities
is larger than the move of a full expression: neighbours in landmark space are then mostly the same
identity, not the same class, as in real data (tests/pipeline/test_synthetic.py measures both).
"""
from __future__ import annotations

import numpy as np

_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # inner upper / inner lower lip, kept from crossing
_MOUTH = slice(48, 68)
_EYES = (slice(36, 42), slice(42, 48))


def identity_morph(base: np.ndarray, seed: int, identity: int, strength: float) -> tuple[np.ndarray, np.ndarray]:
    """Shape offsets [68, 2] (face units) and an RGB skin gain [3] for one identity of one photo."""
    rng = np.random.default_rng([seed, 1_000_003, identity])
    u = rng.uniform(-1.0, 1.0, size=14) * strength  # [14]
    offset = np.zeros((68, 2))  # [68, 2]
    mid = base[27:31, 0].mean()  # face midline x
    offset[0:17, 0] += (base[0:17, 0] - mid) * 0.125 * u[0]  # jaw width
    lower = base[:, 1] > 0.3  # [68] below the nose bridge
    offset[lower, 1] += (base[lower, 1] - 0.3) * 0.115 * u[1]  # lower-face length
    offset[5:12, 1] += np.array([.3, .6, .9, 1, .9, .6, .3]) * 0.06 * u[2]  # chin length
    for eye in _EYES:
        centre = base[eye].mean(0)  # [2]
        offset[eye] += (base[eye] - centre) * 0.15 * u[3]  # eye size
        offset[eye, 1] += 0.03 * u[4]  # eye height against brows and nose
    offset[17:27, 1] += 0.065 * u[5]  # brow height
    slant = np.abs(base[17:27, 0] - mid) - 0.25  # [10] >0 outer brow, <0 inner brow
    offset[17:27, 1] += slant * 0.115 * u[6]  # brow slant (outer end up or down)
    offset[31:36, 0] += (base[31:36, 0] - mid) * 0.21 * u[7]  # nose width
    offset[30:36, 1] += 0.06 * u[8]  # nose length
    mouth_mid = base[_MOUTH, 0].mean()
    offset[_MOUTH, 0] += (base[_MOUTH, 0] - mouth_mid) * 0.115 * u[9]  # mouth width
    offset[_MOUTH, 1] += 0.045 * u[10]  # mouth height
    offset[49:54, 1] -= 0.023 * u[11] * np.array([.5, 1, .8, 1, .5])  # upper lip thickness
    offset[55:60, 1] += 0.023 * u[11] * np.array([.5, 1, 1, 1, .5])  # lower lip thickness
    tone = 0.82 + 0.18 * u[12]
    gain = tone * np.array([1.0, 0.97 + 0.03 * u[13], 0.94 + 0.06 * u[13]])  # [3]
    return offset, gain


def untangle(points: np.ndarray) -> np.ndarray:
    """Keep lips from crossing, eyelids from closing past each other and the upper lip below the nose
    (face units, in place)."""
    for up, low in _LIP_PAIRS:
        if points[low, 1] < points[up, 1]:
            points[[up, low], 1] = points[[up, low], 1].mean()
        points[up - 11, 1] = min(points[up - 11, 1], points[up, 1] - 0.03)  # outer upper lip (50..52)
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        points[lower, 1] = max(points[lower, 1], points[upper, 1] + 0.05)
    base = points[31:36, 1].max()  # a raised or lifted upper lip stays below the nose
    points[49:54, 1] = np.maximum(points[49:54, 1], base + 0.05)
    points[[48, 54], 1] = np.maximum(points[[48, 54], 1], base + 0.07)
    return points
