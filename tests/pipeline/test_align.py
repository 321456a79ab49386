"""Alignment maths: Umeyama similarity, point mapping, 5-point derivation, box and resize transforms."""
import numpy as np
import pytest

from pipeline import geometry
from pipeline.contract import layouts
from pipeline.contract.errors import ConfigError


def _similarity(scale, degrees, tx, ty):
    a = np.deg2rad(degrees)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(7, 2))
    truth = _similarity(1.7, -23.0, 12.0, -40.0)
    dst = geometry.map_points(src, truth).astype(np.float64)
    np.testing.assert_allclose(geometry.umeyama_similarity(src, dst), truth, atol=1e-4)
    weighted = geometry.umeyama_similarity(src, dst, weights=rng.uniform(0.1, 2.0, 7))
    np.testing.assert_allclose(weighted, truth, atol=1e-4)


def test_umeyama_never_reflects():
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 5.0], [7.0, 9.0]])
    mirrored = src * np.array([-1.0, 1.0])
    m = geometry.umeyama_similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_map_and_invert_round_trip():
    t = _similarity(0.5, 15.0, 3.0, 4.0)
    pts = np.array([[1.0, 2.0], [100.0, -3.0]])
    back = geometry.map_points(geometry.map_points(pts, t), geometry.invert_transform(t))
    np.testing.assert_allclose(back, pts, atol=1e-4)
    batched = geometry.map_points(np.stack([pts, pts]), np.stack([t, geometry.invert_transform(t)]))
    np.testing.assert_allclose(batched[0], geometry.map_points(pts, t), atol=1e-5)
    np.testing.assert_allclose(geometry.transform_from_row(geometry.transform_to_row(t)), t, atol=1e-5)


def test_landmarks_onto_template_exactly_when_the_face_is_the_template():
    template = geometry.template_points(256)
    t = _similarity(2.0, 10.0, 50.0, 20.0)
    face = geometry.map_points(template, geometry.invert_transform(t))
    aligned = geometry.map_points(face, geometry.transform_from_points(face, 256))
    np.testing.assert_allclose(aligned, template, atol=1e-3)


def test_five_points_from_68_and_19():
    pts68 = np.arange(136, dtype=np.float64).reshape(68, 2)
    five = geometry.five_points(pts68)
    np.testing.assert_allclose(five[0], pts68[36:42].mean(0))
    np.testing.assert_allclose(five[2], pts68[30])
    np.testing.assert_allclose(five[4], pts68[54])
    aflw = layouts.aflw19_from_ibug68(pts68)
    assert aflw.shape == (19, 2)
    np.testing.assert_allclose(geometry.five_points(aflw)[[2, 3, 4]], pts68[[30, 48, 54]])
    with pytest.raises(ConfigError):
        geometry.five_points(np.zeros((10, 2)))


def test_resize_transform_maps_pixel_centres():
    t = geometry.resize_transform(100, 50, 256)
    corners = geometry.map_points(np.array([[-0.5, -0.5], [99.5, 49.5]]), t)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [255.5, 255.5]], atol=1e-4)


def test_box_transform_puts_the_box_eye_line_on_the_template():
    box = np.array([40.0, 60.0, 120.0, 120.0])
    t = geometry.transform_from_box(box, 256)
    eye_mid = np.array([[box[0] + 60 - 0.5, box[1] + geometry.BOX_EYES_FROM_TOP * 120 - 0.5]])
    np.testing.assert_allclose(geometry.map_points(eye_mid, t)[0], geometry.template_points(256)[:2].mean(0), atol=1e-4)
    np.testing.assert_allclose(geometry.template_box(256)[2], 256 * 0.3 * geometry.BOX_SIDE_PER_IOD, atol=1e-6)


def test_crop_coverage_is_the_share_of_the_crop_inside_the_image():
    rng = np.random.default_rng(0)
    ticks = (np.arange(200) + 0.5) * (256 / 200) - 0.5
    lattice = np.stack([a.ravel() for a in np.meshgrid(ticks, ticks)], axis=1)       # [200*200, 2] crop pixels
    for _ in range(12):
        t = _similarity(rng.uniform(0.3, 2.0), rng.uniform(-35, 35), *rng.uniform(-300, 100, 2))
        width, height = (int(v) for v in rng.integers(50, 400, 2))
        source = geometry.map_points(lattice, geometry.invert_transform(t))
        inside = ((source[:, 0] >= -0.5) & (source[:, 0] < width - 0.5)
                  & (source[:, 1] >= -0.5) & (source[:, 1] < height - 0.5)).mean()
        assert geometry.crop_coverage(t, width, height, 256) == pytest.approx(inside, abs=0.01)
    assert geometry.crop_coverage(geometry.resize_transform(80, 120, 64), 80, 120, 64) == pytest.approx(1.0)
    np.testing.assert_allclose(geometry.clip_box(np.array([-20, 40, 120, 300]), 200, 200), [0, 40, 100, 160])
