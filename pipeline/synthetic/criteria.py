"""The measured criteria of the synthetic set: what the default models see, and how hard the classes are.

- detection: dlib HOG, upsample 0, best box scoring >= 0.5 (as pipeline.stages.faces), per class;
- NME: dlib's 68 points on that box against the true points, mean point error over the outer
  eye-corner distance (points 36, 45);
- nearest centroid: leave-one-out nearest class centroid on generalised-Procrustes-aligned 68-point
  shapes (no learning beyond class means): near 1.0 means landmark neighbours are an oracle for the
  class, which a label-noise method could then exploit without learning anything;
- shape spread: RMS point distance (face units) of identity shapes from their mean against that of
  an expression from neutral, at full intensity and as drawn (intensity uniform in the config's
  range): identities should differ about as much as a full expression moves the mesh, and more than
  a drawn one does.
Used by tests/pipeline/test_synthetic.py and bench/bench_synthetic.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.contract.classes import CANONICAL_CLASSES

HOG_SCORE_THRESHOLD = 0.5  # as pipeline.stages.faces: dlib HOG gives low-score false positives below ~0.5


@dataclass(frozen=True)
class Measured:
    """One generated face and what dlib found on it."""

    label: int
    single: bool  # not a blend
    intensity: float
    truth: np.ndarray  # [68, 2] true points
    points: np.ndarray | None  # [68, 2] dlib's points on its best box, None when not detected


def dlib_measure(samples) -> list[Measured]:
    """Run dlib HOG (upsample 0) and the 68-point predictor on each SyntheticSample."""
    from pipeline.models.dlib_models import hog_detector, shape_predictor

    rows = []
    for s in samples:
        rects, scores, _ = hog_detector().run(s.image, 0, 0.0)
        kept = [(score, rect) for score, rect in zip(scores, rects) if score >= HOG_SCORE_THRESHOLD]
        points = None
        if kept:
            rect = max(kept, key=lambda pair: pair[0])[1]
            points = np.array([[p.x, p.y] for p in shape_predictor()(s.image, rect).parts()], np.float64)
        rows.append(Measured(s.label, bool(s.distribution.max() == 1.0), s.intensity,
                             s.landmarks.astype(np.float64), points))
    return rows


def detection_rates(rows: list[Measured], num_classes: int) -> dict[str, float]:
    """Share of faces detected, per class name."""
    labels = np.array([r.label for r in rows])
    found = np.array([r.points is not None for r in rows])
    return {CANONICAL_CLASSES[c]: float(found[labels == c].mean()) for c in range(num_classes)}


def nme(rows: list[Measured]) -> np.ndarray:
    """[N] inter-ocular (outer eye corners) normalised mean error of each detected face."""
    return np.array([np.linalg.norm(r.points - r.truth, axis=1).mean() / np.linalg.norm(r.truth[45] - r.truth[36])
                     for r in rows if r.points is not None])


def _procrustes(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Similarity-align [P, 2] points to a centred, unit-norm reference (no reflection)."""
    x = points - points.mean(0)
    x = x / np.linalg.norm(x)
    u, _, vt = np.linalg.svd(x.T @ reference)
    if np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
    return x @ (u @ vt)


def procrustes_shapes(shapes: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Generalised Procrustes: [N, P, 2] shapes aligned to their mean shape, each centred, unit norm."""
    reference = shapes[0] - shapes[0].mean(0)
    reference = reference / np.linalg.norm(reference)
    for _ in range(iterations):
        aligned = np.stack([_procrustes(p, reference) for p in shapes])  # [N, P, 2]
        reference = aligned.mean(0) / np.linalg.norm(aligned.mean(0))
    return aligned


def nearest_centroid_loo(x: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[N] leave-one-out nearest-centroid predictions for features x [N, D]."""
    sums = np.stack([x[labels == c].sum(0) for c in range(num_classes)])  # [C, D]
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)  # [C]
    own = np.eye(num_classes)[labels]  # [N, C] leave each sample out of its own class centroid
    centroids = (sums[None] - own[..., None] * x[:, None]) / np.maximum(counts[None] - own, 1)[..., None]
    return np.argmin(((centroids - x[:, None]) ** 2).sum(-1), axis=1)  # [N]


def nearest_centroid_accuracy(rows: list[Measured], num_classes: int, use_truth: bool = False,
                              singles_only: bool = True, min_intensity: float = 0.0
                              ) -> tuple[float, dict[str, float], int]:
    """(accuracy, per class, count) of nearest centroid on Procrustes-aligned dlib (or true) points,
    over the faces drawn at `min_intensity` or more (generator v1's measure: singles at 0.5 or more)."""
    kept = [r for r in rows if (use_truth or r.points is not None) and (r.single or not singles_only)
            and r.intensity >= min_intensity]
    labels = np.array([r.label for r in kept])
    shapes = np.stack([r.truth if use_truth else r.points for r in kept])  # [N, 68, 2]
    x = procrustes_shapes(shapes).reshape(len(kept), -1)  # [N, 136]
    correct = nearest_centroid_loo(x, labels, num_classes) == labels
    per_class = {CANONICAL_CLASSES[c]: float(correct[labels == c].mean()) for c in range(num_classes)}
    return float(correct.mean()), per_class, len(kept)


def shape_spread(num_identities: int = 16, seed: int = 0, strength: float = 1.0,
                 num_sources: int = 2) -> tuple[float, float]:
    """(identity RMS, full-expression RMS): point distances in face units, neutral mesh, no pose.

    Identity: each identity's neutral shape against the mean of all. Expression: each non-neutral
    class at intensity 1 against neutral, averaged over classes and photos.
    """
    from pipeline.synthetic.expressions import expression
    from pipeline.synthetic.reference import reference
    from pipeline.synthetic.shape import identity_morph

    shapes = []
    for i in range(num_identities):
        ref = reference(i % num_sources)
        shapes.append(ref.neutral + identity_morph(ref.neutral, seed, i, strength)[0])
    shapes = np.stack(shapes)  # [I, 68, 2]
    identity = float(np.sqrt(((shapes - shapes.mean(0)) ** 2).sum(-1).mean()))
    moves = []
    for k in range(num_sources):
        side = reference(k).side
        for c in range(1, len(CANONICAL_CLASSES)):
            field = expression(np.eye(len(CANONICAL_CLASSES))[c], 1.0, side).field  # [68, 2]
            moves.append((field ** 2).sum(-1).mean())
    return identity, float(np.sqrt(np.mean(moves)))


def drawn_expression_rms(full: float, min_intensity: float, max_intensity: float) -> float:
    """RMS expression move at intensities uniform in [min, max], from the full-intensity RMS `full`."""
    lo, hi = min_intensity, max_intensity
    mean_square = (hi ** 3 - lo ** 3) / (3 * (hi - lo)) if hi > lo else hi ** 2
    return float(full * np.sqrt(mean_square))
