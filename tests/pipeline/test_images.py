"""pipeline.images: every odd but valid image kind decodes right; every unusable file gets a reason."""
import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import images


def _gradient(height=40, width=60):
    """[H, W, 3] uint8 with distinct rows and columns, so any flip or rotation shows."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 4 % 256, y * 6 % 256, (x + y) * 2 % 256], axis=2).astype(np.uint8)


def test_plain_rgb_png_round_trips(tmp_path):
    image = _gradient()
    Image.fromarray(image).save(tmp_path / "a.png")
    out = images.read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, image)


def test_16_bit_grey_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    cv2.imwrite(str(tmp_path / "g16.png"), values)
    with Image.open(tmp_path / "g16.png") as check:
        assert check.mode.startswith("I;16")          # what Pillow gives for it
    out = images.read_rgb(tmp_path / "g16.png")
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    assert np.all(out[..., 0] == out[..., 2])


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    rgb = _gradient().astype(np.uint16) * 257                        # 8-bit values spread to 16 bits
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1])           # OpenCV writes BGR
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "c16.png"), _gradient())


@pytest.mark.parametrize("orientation, expected", [
    (1, lambda a: a), (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_is_applied(tmp_path, orientation, expected):
    image = _gradient()
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    Image.fromarray(image).save(tmp_path / "o.png", exif=exif)
    out = images.read_rgb(tmp_path / "o.png")
    np.testing.assert_array_equal(out, expected(image))
    with images.OpenImage(tmp_path / "o.png") as handle:
        assert handle.size == (out.shape[1], out.shape[0])           # upright size from the header


def test_cmyk_jpeg_decodes_to_the_right_colours(tmp_path):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :16] = (220, 30, 30)
    rgb[:, 16:32] = (30, 200, 40)
    rgb[:, 32:] = (20, 40, 210)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    out = images.read_rgb(tmp_path / "cmyk.jpg")
    assert np.abs(out.astype(int) - rgb.astype(int))[:, 2:-2].mean() < 12


def test_palette_with_and_without_transparency(tmp_path):
    rgb = _gradient()
    palette = Image.fromarray(rgb).quantize(64)
    palette.save(tmp_path / "p.png")
    out = images.read_rgb(tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))
    palette.save(tmp_path / "pt.png", transparency=int(np.asarray(palette)[0, 0]))
    out = images.read_rgb(tmp_path / "pt.png")
    assert tuple(out[0, 0]) == (255, 255, 255)                       # the transparent index shows white


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)                                      # colour hidden under transparent pixels
    rgba[:, :5, 3] = 255
    rgba[:, 5:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = images.read_rgb(tmp_path / "rgba.png")
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 9]) == (255, 255, 255)
    la = np.stack([np.full((6, 6), 40, np.uint8), np.full((6, 6), 128, np.uint8)], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = images.read_rgb(tmp_path / "la.png")
    assert out.shape == (6, 6, 3) and abs(int(out[0, 0, 0]) - (40 * 128 + 255 * 127) // 255) <= 1


def test_grey_bilevel_and_int_and_float_modes(tmp_path):
    grey = _gradient()[..., 0]
    Image.fromarray(grey).save(tmp_path / "l.png")
    out = images.read_rgb(tmp_path / "l.png")
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    Image.fromarray(grey > 100).save(tmp_path / "b.png")
    assert set(np.unique(images.read_rgb(tmp_path / "b.png"))) <= {0, 255}
    Image.fromarray(grey.astype(np.int32) * 257).save(tmp_path / "i32.tif")
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "i32.tif")[..., 0], grey)
    Image.fromarray(grey.astype(np.float32) / 255.0).save(tmp_path / "f.tif")
    assert np.abs(images.read_rgb(tmp_path / "f.tif")[..., 0].astype(int) - grey).max() <= 1


def test_unusable_files_get_a_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image at all")
    buffer = tmp_path / "whole.jpg"
    Image.fromarray(_gradient(200, 200)).save(buffer, quality=90)
    (tmp_path / "cut.jpg").write_bytes(buffer.read_bytes()[:600])
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    expected = {"absent.png": "missing_file", "empty.jpg": "empty_file", "text.jpg": "not_an_image",
                "cut.jpg": "truncated_or_corrupt_image", "dot.png": "image_too_small"}
    for name, reason in expected.items():
        with pytest.raises(images.ImageReadError) as caught:
            images.read_rgb(tmp_path / name)
        assert caught.value.reason == reason and name in str(caught.value)
        info = images.probe(tmp_path / name)
        assert info.reason == reason and info.detail
    assert images.probe(buffer) == images.ImageInfo(None, "", 200, 200)


def test_reduced_jpeg_decode_and_its_pixel_grid(tmp_path):
    Image.fromarray(_gradient(480, 640)).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(_gradient(480, 640)).save(tmp_path / "big.png")
    with images.OpenImage(tmp_path / "big.jpg") as handle:
        small, k = handle.rgb(reduce=4)
    assert k == 4 and small.shape == (120, 160, 3)
    with images.OpenImage(tmp_path / "big.png") as handle:               # PNG has no DCT scaling
        full, k = handle.rgb(reduce=4)
    assert k == 1 and full.shape == (480, 640, 3)
    # reduced pixel (i, j) is the mean of the full block [4i, 4i + 4): centre 4i + 1.5 = k (i + 0.5) - 0.5
    to_full = images.reduced_to_full(4)
    np.testing.assert_allclose(to_full @ np.array([0.0, 0.0, 1.0]), [1.5, 1.5])
    block = full[:120 * 4, :160 * 4].reshape(120, 4, 160, 4, 3).mean(axis=(1, 3))
    assert np.abs(small.astype(float) - block).mean() < 3.0
    assert images.reduction_for_scale(0.3) == 2 and images.reduction_for_scale(0.1) == 8
    assert images.reduction_for_scale(0.9) == 1
