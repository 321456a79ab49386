"""Face alignment: a least-squares similarity transform (Umeyama 1991) onto a canonical 5-point template.

Coordinates everywhere are pixel-index coordinates: the centre of pixel (column 0, row 0) is (0, 0), which
is what dlib, OpenCV's warpAffine and the landmark backends use. A transform is a 2x3 matrix `M` with
`crop_xy = M @ [x, y, 1]`, stored row-major as 6 floats in faces.parquet.

The five points are the two eye centres (image left first), the nose tip and the two mouth corners. They
come from 68-point (iBUG 300-W) or 19-point (AFLW) landmarks, or, when no points exist, from a face box
through `transform_from_box`. The fit is eye-dominant (weights: eyes 1, nose tip 0.1, mouth corners 0.03):
the eyes fix rotation and scale, as in the usual eye-aligned FER crops, and the mouth, which moves with the
expression (a wide smile must not shrink the crop), only nudges what the eyes leave open. On the astronaut
this puts both eye centres within 0.6 px of the template (equal weights: 2.2 px).
"""
from __future__ import annotations

import numpy as np

from pipeline.contract import layouts
from pipeline.contract.errors import ConfigError

STAGE_VERSION = "1.0.0"

# Canonical template as fractions of the crop side: inter-ocular distance 0.30 of the crop, eyes at 0.38
# of the height, nose tip 0.58 IOD and mouth corners 1.0 IOD below the eye line (adult anthropometry),
# leaving brows above and chin (~1.7 IOD below the eyes) inside a 256 crop and a 224 random crop of it.
TEMPLATE_UNIT = np.array([
    [0.350, 0.380],   # eye centre, image left (subject's right eye)
    [0.650, 0.380],   # eye centre, image right
    [0.500, 0.554],   # nose tip
    [0.365, 0.680],   # mouth corner, image left
    [0.635, 0.680],   # mouth corner, image right
], dtype=np.float64)
TEMPLATE_WEIGHTS = np.array([1.0, 1.0, 0.1, 0.03, 0.03])  # eyes, nose tip, mouth corners

# Where a face box sits relative to the eyes, measured on dlib HOG boxes (scikit-image astronaut: box side
# 2.10 IOD, eye midpoint 0.295 box heights below the top and 0.05 box widths right of centre, a slight
# head turn; the offset is taken as 0 for a frontal face). Used only when no landmarks exist.
BOX_SIDE_PER_IOD = 2.10
BOX_EYES_FROM_TOP = 0.295


def template_points(size: int) -> np.ndarray:
    """[5, 2] canonical points in pixel-index coordinates of a `size` x `size` crop."""
    return TEMPLATE_UNIT * size - 0.5  # [5, 2]: fraction of the side -> pixel-index coordinates


def five_points(points: np.ndarray) -> np.ndarray:
    """[P, 2] landmarks in a known layout (68 iBUG or 19 AFLW) -> [5, 2] eyes, nose tip, mouth corners."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape == (layouts.IBUG68, 2):
        return np.stack([
            points[36:42].mean(axis=0), points[42:48].mean(axis=0),
            points[30], points[48], points[54],
        ])
    if points.shape == (layouts.AFLW19, 2):
        return points[list(layouts.AFLW19_FIVE)]    # eye centres, nose tip, mouth corners
    if points.shape == (5, 2):
        return points
    raise ConfigError(f"cannot derive 5 alignment points from landmarks of shape {points.shape}; "
                      f"valid layouts: [68, 2] (iBUG), [19, 2] (AFLW), [5, 2]")


def umeyama_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity (rotation, uniform scale, translation) taking src onto dst.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", PAMI 1991,
    eq. 40-42, with per-point weights; reflections are excluded. Returns the 2x3 matrix M.
    """
    src = np.asarray(src, dtype=np.float64)            # [N, 2]
    dst = np.asarray(dst, dtype=np.float64)            # [N, 2]
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()                                    # [N]
    mu_src = w @ src                                   # [2]
    mu_dst = w @ dst                                   # [2]
    src_c, dst_c = src - mu_src, dst - mu_dst          # [N, 2]
    var_src = float(w @ (src_c ** 2).sum(axis=1))
    if var_src <= 1e-12:
        raise ValueError("degenerate point set: all source points coincide")
    cov = (dst_c * w[:, None]).T @ src_c               # [2, 2]
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt                  # [2, 2]
    scale = float((sigma * sign).sum() / var_src)
    translation = mu_dst - scale * rotation @ mu_src   # [2]
    return np.hstack([scale * rotation, translation[:, None]])  # [2, 3]


def transform_from_points(points: np.ndarray, size: int) -> np.ndarray:
    """2x3 transform that aligns landmarks ([68|19|5, 2] image pixels) onto the template of a size-S crop."""
    return umeyama_similarity(five_points(points), template_points(size), TEMPLATE_WEIGHTS)


def transform_from_box(box_xywh: np.ndarray, size: int) -> np.ndarray:
    """2x3 transform from a face box [x, y, w, h] when no landmarks exist (no rotation).

    The box's side is taken as BOX_SIDE_PER_IOD inter-ocular distances and the eye line as lying
    BOX_EYES_FROM_TOP box heights below its top, then the eye midpoint goes to the template's.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    if not (w > 0 and h > 0):
        raise ValueError(f"face box must have positive width and height, got {box_xywh}")
    side = np.sqrt(w * h)
    template = template_points(size)
    template_iod = float(template[1, 0] - template[0, 0])
    scale = template_iod * BOX_SIDE_PER_IOD / side
    eye_mid_src = np.array([x + 0.5 * w - 0.5, y + BOX_EYES_FROM_TOP * h - 0.5])
    eye_mid_dst = template[:2].mean(axis=0)
    translation = eye_mid_dst - scale * eye_mid_src
    return np.array([[scale, 0.0, translation[0]], [0.0, scale, translation[1]]])


def resize_transform(width: int, height: int, size: int) -> np.ndarray:
    """2x3 transform of a plain resize of a whole pre-aligned image to size x size (pixel-centre convention)."""
    sx, sy = size / float(width), size / float(height)
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def warp_crop(image: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 image -> [size, size, 3] uint8 crop through the 2x3 transform (bilinear, black border)."""
    import cv2

    return cv2.warpAffine(image, np.asarray(transform, dtype=np.float64), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def map_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """[..., P, 2] points through a 2x3 transform ([2, 3], or [..., 2, 3] batched) -> [..., P, 2] float32."""
    points = np.asarray(points, dtype=np.float64)
    transform = np.asarray(transform, dtype=np.float64)
    linear = transform[..., :2]                                   # [..., 2, 2]
    shift = transform[..., 2]                                     # [..., 2]
    mapped = np.einsum("...ij,...pj->...pi", linear, points) + shift[..., None, :]
    return mapped.astype(np.float32)


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine transform (crop -> image)."""
    full = np.vstack([np.asarray(transform, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def transform_to_row(transform: np.ndarray) -> np.ndarray:
    """2x3 -> [6] float32, row-major (the faces.parquet `transform` column)."""
    return np.asarray(transform, dtype=np.float32).reshape(6)


def transform_from_row(row: np.ndarray) -> np.ndarray:
    """[6] (or [N, 6]) -> 2x3 (or [N, 2, 3])."""
    row = np.asarray(row, dtype=np.float64)
    return row.reshape(*row.shape[:-1], 2, 3)


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 transform applying `inner` first, then `outer`."""
    outer, inner = np.asarray(outer, dtype=np.float64), np.asarray(inner, dtype=np.float64)
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def transform_scale(transform: np.ndarray) -> float:
    """Output pixels per source pixel of a 2x3 transform (square root of its linear part's |det|)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(transform, dtype=np.float64)[:, :2]))))


def clip_box(box_xywh: np.ndarray, width: int, height: int) -> np.ndarray:
    """[x, y, w, h] clipped to the image [0, width] x [0, height]; w or h <= 0 when nothing is left."""
    x, y, w, h = (float(v) for v in box_xywh)
    left, top = max(x, 0.0), max(y, 0.0)
    right, bottom = min(x + w, float(width)), min(y + h, float(height))
    return np.array([left, top, right - left, bottom - top])


def crop_coverage(transform: np.ndarray, width: int, height: int, size: int) -> float:
    """Share of a size x size crop whose source lies inside the width x height image (1 - padding share).

    Exact: the crop square mapped back through the transform is clipped against the image rectangle
    (Sutherland-Hodgman), and the areas compared (pixel-index coordinates: pixels span i - 0.5 .. i + 0.5).
    """
    back = invert_transform(transform)                                        # [2, 3] crop -> image
    edge = size - 0.5
    polygon = [tuple(back @ (x, y, 1.0)) for x, y in ((-0.5, -0.5), (edge, -0.5), (edge, edge), (-0.5, edge))]
    whole = _area(polygon)
    for axis, limit, keep_below in ((0, -0.5, False), (0, width - 0.5, True), (1, -0.5, False), (1, height - 0.5, True)):
        polygon = _clip(polygon, axis, limit, keep_below)
        if not polygon:
            return 0.0
    return float(_area(polygon) / whole) if whole > 0 else 0.0


def _clip(polygon: list[tuple[float, float]], axis: int, limit: float,
          keep_below: bool) -> list[tuple[float, float]]:
    """The part of a convex polygon on one side of the line coordinate[axis] == limit."""
    inside = (lambda p: p[axis] <= limit) if keep_below else (lambda p: p[axis] >= limit)
    out = []
    for i, current in enumerate(polygon):
        previous = polygon[i - 1]
        if inside(current) != inside(previous):
            t = (limit - previous[axis]) / (current[axis] - previous[axis])
            out.append((previous[0] + t * (current[0] - previous[0]), previous[1] + t * (current[1] - previous[1])))
        if inside(current):
            out.append(current)
    return out


def _area(polygon: list[tuple[float, float]]) -> float:
    """Shoelace area of a simple polygon."""
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(polygon, polygon[1:] + polygon[:1])))


def template_box(size: int) -> np.ndarray:
    """[4] x, y, w, h: where a dlib-style face box lies in a template-aligned crop (inverse of the box model)."""
    template = template_points(size)
    side = BOX_SIDE_PER_IOD * float(template[1, 0] - template[0, 0])
    eye_mid = template[:2].mean(axis=0) + 0.5
    return np.array([eye_mid[0] - 0.5 * side, eye_mid[1] - BOX_EYES_FROM_TOP * side, side, side])
