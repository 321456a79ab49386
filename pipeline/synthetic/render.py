"""Image operations of the synthetic face generator: piecewise-affine warp, painting, lighting, background.

Split out of pipeline.synthetic.generator (which decides what to draw); these functions only draw it.
"""
from __future__ import annotations

import functools

import numpy as np


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a [2, 3] affine to [N, 2] points."""
    return points @ affine[:, :2].T + affine[:, 2]  # [N, 2]


def warp_mesh(src_image: np.ndarray, src: np.ndarray, dst: np.ndarray, triangles: np.ndarray,
          size: int, fallback: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp: each dst triangle samples its src triangle; one remap for the image."""
    import cv2

    ones = np.ones((len(triangles), 3, 1))
    d = np.concatenate([dst[triangles], ones], 2)  # [T, 3, 3]
    area = np.abs(np.linalg.det(d)) / 2  # [T]
    live = area > 1e-3  # degenerate (closed-mouth) triangles cover no pixel
    maps = np.zeros((len(triangles) + 1, 3, 2))  # [T + 1, 3, 2] pixel (x, y, 1) -> source (x, y)
    maps[:-1][live] = np.linalg.solve(d[live], src[triangles][live])
    maps[-1] = fallback.T  # pixels outside the mesh follow the global placement
    index = np.full((size, size), len(triangles), np.int32)  # [H, W]
    for t in np.flatnonzero(live):
        cv2.fillConvexPoly(index, np.round(dst[triangles[t]] * 16).astype(np.int32), int(t), cv2.LINE_8, 4)
    xs, ys = _grid(size)  # [H, W] each
    m = maps.astype(np.float32)[index]  # [H, W, 3, 2]
    map_x = xs * m[..., 0, 0] + ys * m[..., 1, 0] + m[..., 2, 0]  # [H, W]
    map_y = xs * m[..., 0, 1] + ys * m[..., 1, 1] + m[..., 2, 1]  # [H, W]
    return cv2.remap(src_image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (xs, ys), each [size, size] float32; cached, read-only."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)  # [H, W] each
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def soft_mask(size: int, polygons: list[np.ndarray], sigma: float) -> np.ndarray:
    """Anti-aliased filled polygons (output pixels) blurred by sigma: [H, W] float32 in 0..1."""
    import cv2

    mask = np.zeros((size, size), np.float32)  # [H, W]
    for poly in polygons:
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(mask, (0, 0), max(sigma, 0.3))


def paint_mouth(image: np.ndarray, marks: np.ndarray, gap: float, scale: float,
                lip_colour: np.ndarray, teeth: bool = False) -> np.ndarray:
    """Lips painted in over the source mouth; when open (gap in face units) a dark cavity, with upper
    teeth when `teeth`; when closed a thin line between the lips."""
    import cv2

    size = image.shape[0]
    soft = 0.012 * scale
    lips = soft_mask(size, [marks[48:60]], soft)[..., None]  # [H, W, 1]
    upper = soft_mask(size, [marks[[48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60]]], soft)[..., None]
    paint = lip_colour * (1.0 - 0.18 * upper)  # [H, W, 3] upper lip a little darker
    image = image * (1 - lips) + paint * lips
    if gap > 0.01:
        cavity = soft_mask(size, [marks[60:68]], soft)[..., None]  # [H, W, 1]
        image = image * (1 - cavity) + np.array([80.0, 34.0, 38.0], np.float32) * cavity
        if teeth:
            axis = marks[45] - marks[36]
            down = np.array([-axis[1], axis[0]]) / np.linalg.norm(axis)  # [2] the face's down in pixels
            edge = marks[[60, 61, 62, 63, 64]]  # [5, 2] inner upper lip
            band = np.concatenate([edge, edge[::-1] + down * min(0.6 * gap, 0.05) * scale])  # [10, 2]
            tooth = soft_mask(size, [band], 0.5 * soft)[..., None] * cavity  # [H, W, 1]
            image = image * (1 - tooth) + np.array([236.0, 228.0, 212.0], np.float32) * tooth
    else:
        line = np.zeros((size, size), np.float32)  # [H, W]
        pts = np.round(marks[[48, 60, 61, 62, 63, 64, 54]] * 16).astype(np.int32)
        cv2.polylines(line, [pts], False, 1.0, max(1, round(0.012 * scale)), cv2.LINE_AA, 4)
        image = image * (1 - 0.3 * line[..., None])
    return image


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random backdrop: base colour, linear gradient and low-frequency blotches."""
    import cv2

    base = rng.uniform(40, 220, 3)  # [3]
    base = 0.5 * base + 0.5 * base.mean()  # muted colours
    ramp = _ramp(size, rng.uniform(0, 2 * np.pi))[..., None] * rng.uniform(0, 80)  # [H, W, 1]
    noise = rng.normal(0, 18, (4, 4, 1)) + rng.normal(0, 6, (4, 4, 3))  # [4, 4, 3] mostly grey blotches
    blotch = cv2.resize(noise.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)  # [H, W, 3]
    return base.astype(np.float32) + ramp + blotch  # [H, W, 3]


def _ramp(size: int, angle: float) -> np.ndarray:
    """Linear ramp [H, W] float32 along `angle`, -0.7..0.7 across the image."""
    xs, ys = _grid(size)
    return ((xs * np.cos(angle) + ys * np.sin(angle)) / size - 0.5 * (np.cos(angle) + np.sin(angle))).astype(
        np.float32)


def shade(image: np.ndarray, gain: np.ndarray, size: int, lighting: float,
          rng: np.random.Generator) -> np.ndarray:
    """Directional light, exposure and colour on the face layer (float32 0..255)."""
    light = 1 + rng.uniform(0, lighting) * 2 * _ramp(size, rng.uniform(0, 2 * np.pi))  # [H, W]
    colour = gain * rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, 3)  # [3]
    return image * light[..., None] * colour.astype(np.float32)  # [H, W, 3]


def head_polygons(placement: np.ndarray, outlines: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """A source photo's outlines (head and hair, neck and shoulders; face units) in output pixels."""
    return [apply_affine(placement, outline) for outline in outlines]


def jaw_shadow(image: np.ndarray, marks: np.ndarray, scale: float, strength: float) -> np.ndarray:
    """Darken soft bands just outside the sides of the jaw line (points 0..5 and 11..16, not under
    the chin, where a dark band reads as a mouth): the cheek contour stays visible against hair."""
    centre = marks[27:36].mean(axis=0)  # [2] nose
    bands = []
    for side in (marks[0:6], marks[11:17]):  # [6, 2] each
        out = centre + (side - centre) * (1 + 0.12 * scale / np.linalg.norm(side - centre, axis=1))[:, None]
        bands.append(np.concatenate([side, out[::-1]]))  # [12, 2]
    mask = soft_mask(image.shape[0], bands, 0.02 * scale)[..., None]  # [H, W, 1]
    return image * (1 - strength * mask)


def paint_brows(image: np.ndarray, marks: np.ndarray, scale: float, strength: float) -> np.ndarray:
    """Darken the brow lines (points 17..21 and 22..26): faint brows stay visible to a landmark model."""
    import cv2

    line = np.zeros(image.shape[:2], np.float32)  # [H, W]
    for brow in (marks[17:22], marks[22:27]):
        cv2.polylines(line, [np.round(brow * 16).astype(np.int32)], False, 1.0,
                      max(1, round(0.04 * scale)), cv2.LINE_AA, 4)
    line = cv2.GaussianBlur(line, (0, 0), max(0.3, 0.01 * scale))[..., None]  # [H, W, 1]
    return image * (1 - strength * line) + np.float32(60.0) * strength * line


def _lines(size: int, polylines: list[np.ndarray], width: float) -> np.ndarray:
    """Anti-aliased open polylines [H, W] float32 0..1 of the given width (pixels), softened."""
    import cv2

    canvas = np.zeros((size, size), np.float32)  # [H, W]
    for line in polylines:
        cv2.polylines(canvas, [np.round(line * 16).astype(np.int32)], False, 1.0, max(1, round(width)),
                      cv2.LINE_AA, 4)
    return cv2.GaussianBlur(canvas, (0, 0), max(0.3, 0.5 * width))


def paint_wrinkles(image: np.ndarray, marks: np.ndarray, scale: float, levels: dict[str, float]) -> np.ndarray:
    """The furrows action units draw on the skin, each darkened by its level (0..1): `forehead`
    (AU01/02: lines above the brows), `glabella` (AU04: between the brows), `nose` (AU09: across the
    bridge) and `fold_left` / `fold_right` (nasolabial folds deepened by a raised or pulled lip corner)."""
    size = image.shape[0]
    axis = (marks[45] - marks[36]) / np.linalg.norm(marks[45] - marks[36])  # [2] along the eyes
    up = np.array([axis[1], -axis[0]])  # [2] the face's up in pixels
    brow_mid = marks[[21, 22]].mean(0)  # [2]
    parts: list[tuple[float, list[np.ndarray]]] = []
    if levels.get("forehead", 0) > 0:
        rows = [brow_mid + up * scale * h + axis[None] * scale * np.linspace(-0.3, 0.3, 5)[:, None]
                for h in (0.2, 0.3)]
        parts.append((levels["forehead"], [r - up * scale * 0.02 * np.cos(np.linspace(-1.5, 1.5, 5))[:, None]
                                           for r in rows]))
    if levels.get("glabella", 0) > 0:
        parts.append((levels["glabella"], [np.stack([brow_mid + axis * scale * dx + up * scale * 0.06,
                                                     brow_mid + axis * scale * dx * 0.7 - up * scale * 0.04])
                                           for dx in (-0.04, 0.04)]))
    if levels.get("nose", 0) > 0:
        parts.append((levels["nose"], [marks[h] + axis[None] * scale * np.array([[-0.06], [0.0], [0.06]])
                                       + up * scale * np.array([[0.0], [0.012], [0.0]]) for h in (28, 29)]))
    for side, (wing, corner) in (("fold_left", (31, 48)), ("fold_right", (35, 54))):
        if levels.get(side, 0) > 0:
            start = marks[wing] + (marks[wing] - marks[33]) * 0.6  # [2] beside the nose wing
            end = marks[corner] + (marks[corner] - marks[51]) * 0.25 - up * scale * 0.05  # [2] past the corner
            bend = (start + end) / 2 + (start + end - 2 * marks[33]) * 0.12  # [2] bowed outwards
            parts.append((levels[side], [np.stack([start, bend, end])]))
    for level, lines in parts:
        shadow = _lines(size, lines, 0.02 * scale)[..., None]  # [H, W, 1]
        image = image * (1 - 0.45 * min(level, 1.0) * shadow)
    return image
