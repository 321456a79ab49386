"""The faces stage on odd images: each written into a native layout, run through the sources stage, then
through detect_align_shard, with its expected verdict.

`ok` cases compare the crop with the crop the same stage makes from the upright 8-bit RGB reference
(so a 16-bit image clipped to white, or an EXIF orientation ignored, fails); the others name the
quarantine reason and the stage that gives it. Images without a given box go through the folder
layout and the `prealigned` detector; box cases through the AffectNet layout and the `given` detector.
Cases awaiting the faces-stage fix are xfail(strict=True) with reason "awaiting faces-stage fix".
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from pipeline.contract.tables import vectors_to_numpy
from pipeline.sources import prepare_source
from pipeline.stages.faces import AlignConfig, detect_align_shard

from .layouts import AffectNet, Folder

AWAIT = "awaiting faces-stage fix"
HEIGHT, WIDTH = 40, 60


def reference() -> np.ndarray:
    """[40, 60, 3] uint8: four coloured blocks and a gradient, so rotations and channel swaps show."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:20, :30], image[:20, 30:] = (220, 40, 40), (40, 220, 40)
    image[20:, :30], image[20:, 30:] = (40, 40, 220), (230, 230, 60)
    image[:, :, 1] = np.clip(image[:, :, 1].astype(int) + np.arange(WIDTH)[None, :], 0, 255)
    return image


def grey_reference() -> np.ndarray:
    return np.repeat(np.asarray(Image.fromarray(reference()).convert("L"))[..., None], 3, axis=2)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def rgb(fmt: str, **kw) -> Callable[[], bytes]:
    return lambda: encode(Image.fromarray(reference()), fmt, **kw)


def converted(mode: str, fmt: str = "PNG", **kw) -> Callable[[], bytes]:
    return lambda: encode(Image.fromarray(reference()).convert(mode, **kw), fmt)


def grey16(fmt: str) -> bytes:
    grey = np.asarray(Image.fromarray(reference()).convert("L")).astype(np.uint16) * 257   # [H, W] 0..65535
    return encode(Image.fromarray(grey), fmt)


def int32_tiff() -> bytes:
    grey = np.asarray(Image.fromarray(reference()).convert("L")).astype(np.int32) * 257
    return encode(Image.fromarray(grey, mode="I"), "TIFF")


def rgb48_png() -> bytes:
    ok, data = cv2.imencode(".png", (reference().astype(np.uint16) * 257)[..., ::-1])   # [H, W, 3] BGR uint16
    assert ok
    return data.tobytes()


# EXIF orientation -> how the stored pixels relate to the upright image (PIL transpose of the upright view)
STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
          8: Image.Transpose.ROTATE_270, 5: Image.Transpose.TRANSPOSE}


def exif_rotated(orientation: int) -> Callable[[], bytes]:
    def make() -> bytes:
        stored = Image.fromarray(reference()).transpose(STORED[orientation])
        exif = Image.Exif()
        exif[0x0112] = orientation
        return encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    return make


def alpha(mode: str, value: int) -> Callable[[], bytes]:
    def make() -> bytes:
        rgba = np.dstack([reference(), np.full((HEIGHT, WIDTH), value, np.uint8)])
        return encode(Image.fromarray(rgba).convert(mode), "PNG")
    return make


def transparent_palette() -> bytes:
    image = Image.fromarray(reference()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return encode(image, "PNG", transparency=int(np.asarray(image)[0, 0]))


def gif_two_frames() -> bytes:
    first, second = Image.fromarray(reference()), Image.fromarray(255 - reference())
    return encode(first, "GIF", save_all=True, append_images=[second])


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def white(_: np.ndarray) -> np.ndarray:
    return np.full_like(_, 255)


@dataclass(frozen=True)
class ImageCase:
    name: str
    make: Callable[[], bytes]
    ext: str = "png"
    verdict: str = "ok"                  # ok | a quarantine reason
    stage: str = "faces"                 # which stage gives the verdict: faces | sources
    expect: Callable[[np.ndarray], np.ndarray] = lambda ref: ref   # the upright RGB the crop must match
    tol: float = 3.0                     # mean absolute difference allowed against the reference crop
    after: Callable[[Path], None] | None = None   # changes the file between the sources and faces stages
    box: tuple[float, float, float, float] | None = None
    xfail: str = ""


def run_stage(tmp: Path, data: bytes, ext: str, box: tuple | None) -> tuple[object, Path, str]:
    """Write one image into a native layout and run the sources stage: (result, image path, relpath)."""
    if box is None:
        layout, relpath = Folder(tmp), f"train/happy/odd.{ext}"
        layout.files = {relpath: data}
        image_path = tmp / relpath
    else:
        layout, relpath = AffectNet(tmp), f"3/odd.{ext}"
        layout.train.append(layout.row(relpath, box=tuple(str(v) for v in box), landmarks=""))
        layout.images[relpath] = data
        image_path = layout.image_root / relpath
    layout.write()
    return prepare_source(layout.adapter, tmp, None, work_dir=tmp / "cache", progress=False), image_path, relpath


def faces(result, relpath: str, box: tuple | None):
    samples = result.samples.filter(pc.equal(result.samples.column("relpath"), relpath))
    config = AlignConfig(detector="prealigned" if box is None else "given", crop_size=32)
    return detect_align_shard(samples, result.image_root, config, progress=False)


def reference_crop(tmp: Path, case: ImageCase) -> np.ndarray:
    data = encode(Image.fromarray(case.expect(reference())), "PNG")
    result, _, relpath = run_stage(tmp, data, "png", case.box)
    return faces(result, relpath, case.box)[1][0]


C = ImageCase
CASES = [
    C("rgb_png", rgb("PNG")),
    C("rgb_jpeg", rgb("JPEG", quality=95), "jpg", tol=6),
    C("rgb_bmp", rgb("BMP"), "bmp"),
    C("rgb_webp_lossless", rgb("WEBP", lossless=True), "webp"),
    C("rgb_tiff", rgb("TIFF"), "tif"),
    C("grey_png", converted("L"), expect=lambda ref: grey_reference()),
    C("bilevel_png", converted("1"), verdict="ok", expect=lambda ref: grey_reference(), tol=128),
    C("palette_png", converted("P", palette=Image.Palette.ADAPTIVE, colors=16), tol=12),
    C("palette_with_transparency", transparent_palette, tol=128),
    C("cmyk_jpeg", converted("CMYK", "JPEG"), "jpg", tol=8),
    C("ycbcr_jpeg", converted("YCbCr", "JPEG"), "jpg", tol=8),
    C("grey_alpha_opaque", alpha("LA", 255), expect=lambda ref: grey_reference()),
    C("rgba_opaque", alpha("RGBA", 255)),
    C("rgba_transparent_over_white", alpha("RGBA", 0), expect=white),
    C("grey16_png", lambda: grey16("PNG"), expect=lambda ref: grey_reference(), tol=1.5),
    C("grey16_tiff", lambda: grey16("TIFF"), "tif", expect=lambda ref: grey_reference(), tol=1.5),
    C("int32_grey_tiff", int32_tiff, "tif", expect=lambda ref: grey_reference(), tol=1.5),
    C("rgb48_png", rgb48_png),
    C("exif_orientation_2_mirrored", exif_rotated(2), "jpg", tol=6),
    C("exif_orientation_3_upside_down", exif_rotated(3), "jpg", tol=6),
    C("exif_orientation_5_transposed", exif_rotated(5), "jpg", tol=6),
    C("exif_orientation_6_rotated_cw", exif_rotated(6), "jpg", tol=6),
    C("exif_orientation_8_rotated_ccw", exif_rotated(8), "jpg", tol=6),
    C("gif_first_frame", gif_two_frames, "gif", tol=12),
    C("truncated_after_sources", rgb("PNG"), verdict="unreadable_image", after=truncate),
    C("zero_bytes_after_sources", rgb("PNG"), verdict="unreadable_image", after=lambda p: p.write_bytes(b"")),
    C("text_after_sources", rgb("PNG"), verdict="unreadable_image", after=lambda p: p.write_text("text")),
    C("deleted_after_sources", rgb("PNG"), verdict="unreadable_image", after=os.remove),
    C("zero_byte_file", lambda: b"", verdict="empty_file", stage="sources"),
    C("truncated_file", lambda: rgb("PNG")()[:120], verdict="truncated_or_corrupt_image", stage="sources"),
    C("one_pixel_image", lambda: encode(Image.new("RGB", (1, 1)), "PNG"), verdict="image_too_small",
      stage="sources"),
    C("box_inside", rgb("PNG"), box=(10, 5, 30, 30), expect=lambda ref: ref, tol=0.5),
    C("box_wholly_outside", rgb("PNG"), verdict="box_outside_image", box=(100, 80, 20, 20), stage="sources"),
    C("box_partly_outside_is_clipped", rgb("PNG"), box=(40, 20, 40, 40)),
    C("box_mostly_padding", rgb("PNG"), verdict="crop_mostly_padding", box=(0, 0, 60, 40)),   # crop 40% inside
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)]
                                               if c.xfail else []) for c in CASES])
def test_faces_verdict(case, tmp_path):
    result, image_path, relpath = run_stage(tmp_path / "odd", case.make(), case.ext, case.box)
    quarantined = dict(zip(result.quarantine.column("relpath").to_pylist(),
                           result.quarantine.column("reason").to_pylist()))
    if case.stage == "sources":
        assert quarantined.get(relpath) == case.verdict, quarantined
        return
    assert relpath in result.samples.column("relpath").to_pylist(), quarantined
    if case.after is not None:
        case.after(image_path)
    table, crops, quarantine = faces(result, relpath, case.box)
    status = table.column("status")[0].as_py()
    if case.verdict != "ok":
        assert [row.reason for row in quarantine] == [case.verdict] and status not in ("ok", "multi_face")
        assert not crops.any()
        return
    assert status == "ok" and not quarantine
    row = result.samples.filter(pc.equal(result.samples.column("relpath"), relpath))
    size = (int(row.column("width")[0].as_py()), int(row.column("height")[0].as_py()))
    assert size == (WIDTH, HEIGHT), f"sources recorded {size}, the upright image is {WIDTH}x{HEIGHT}"
    box = vectors_to_numpy(table.column("bbox"))[0]
    assert box[0] >= 0 and box[1] >= 0 and box[0] + box[2] <= WIDTH + 1e-6 and box[1] + box[3] <= HEIGHT + 1e-6
    expected = reference_crop(tmp_path / "reference", case)
    difference = np.abs(crops[0].astype(np.int16) - expected.astype(np.int16)).mean()
    assert difference <= case.tol, f"crop differs from the upright reference by {difference:.1f} on average"


def test_faces_kinds():
    assert len({c.name for c in CASES}) == len(CASES) >= 30
