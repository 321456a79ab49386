"""Folder adapter: odd files, folders and links in <root>/<split>/<class>/, each with its verdict.

The input count is every entry os.walk lists without following links, so a file the adapter skipped
silently would break the accounting of every case.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.contract.errors import ConfigError

from .cases import Case, kinds, params, row_of, run_case
from .layouts import Folder, deep_folder, jpeg, link, png_claiming, put, remove_tree


def file(relpath: str, data: bytes | None = None):
    """A build step adding one file (a small JPEG unless data is given)."""
    def build(layout) -> None:
        layout.files[relpath] = jpeg(11) if data is None else data
    return build


def fs(make):
    """A build step changing the file system after the baseline is written."""
    def build(layout) -> None:
        layout.write()
        make(layout.root)
    return build


def png(mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (9, 9, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


def only_unknown_splits(layout) -> None:
    layout.files = {"trian/happy/a.jpg": jpeg(1)}
    layout.baseline = []


def symlinked_split_only(layout) -> None:
    outside = layout.root.parent / "elsewhere"
    put(outside / "happy" / "a.jpg", jpeg(1))
    layout.files, layout.baseline = {}, []
    link(layout.root / "train", outside)


def deep_file(depth: int):
    """A build step writing train/happy/d/d/.../x.jpg, `depth` folders below the class folder."""
    def make(root) -> None:
        put(deep_folder(root / "train" / "happy", depth) / "x.jpg", jpeg(12))
    return fs(make)


DEEP = "train/happy/" + "d/" * 1200 + "x.jpg"


def label_is(label: int):
    def check(result) -> None:
        assert row_of(result, "train/Happy/x.jpg")["label"] == label
    return check


def split_is(relpath: str, split: str):
    def check(result) -> None:
        assert row_of(result, relpath)["split"] == split
    return check


Q, E, K, R = "quarantined", "excluded", "kept", "refused"
CASES = [
    Case("plain", lambda L: None, K, "train/happy/a.jpg"),
    Case("class_alias_capitalised", file("train/Happy/x.jpg"), K, "train/Happy/x.jpg", check=label_is(1)),
    Case("canonical_class_name", file("train/surprise/x.jpg"), K, "train/surprise/x.jpg"),
    Case("split_alias_validation", file("Validation/neutral/x.jpg"), K, "Validation/neutral/x.jpg",
         check=split_is("Validation/neutral/x.jpg", "val")),
    Case("split_alias_testing", file("testing/fear/x.jpg"), K, "testing/fear/x.jpg"),
    Case("nested_folder_below_class", file("train/happy/session1/x.jpg"), K, "train/happy/session1/x.jpg"),
    Case("png_named_jpg", file("train/happy/x.jpg", png()), K, "train/happy/x.jpg"),
    Case("no_extension", file("train/happy/x", png()), K, "train/happy/x"),
    Case("upper_case_extension", file("train/happy/X.JPEG"), K, "train/happy/X.JPEG"),
    Case("grey_png", file("train/happy/x.png", png("L")), K, "train/happy/x.png"),
    Case("space_in_name", file("train/happy/my photo.jpg"), K, "train/happy/my photo.jpg"),
    Case("symlink_to_file_inside", fs(lambda r: link(r / "train/happy/x.jpg", "a.jpg")), K, "train/happy/x.jpg"),
    Case("file_directly_under_split", file("train/x.jpg"), Q, "no_class_folder", "train/x.jpg"),
    Case("misspelt_split_folder", file("trian/happy/x.jpg"), Q, "unknown_split_folder", "trian/happy/x.jpg"),
    Case("unknown_split_folder", file("holdout/happy/x.jpg"), Q, "unknown_split_folder", "holdout/happy/x.jpg"),
    Case("unknown_class_folder", file("train/bored/x.jpg"), Q, "label_outside_class_set", "train/bored/x.jpg"),
    Case("contempt_in_7_class_view", file("train/contempt/x.jpg"), E, "contempt_outside_7_class_view",
         spec={"num_classes": 7}),
    Case("dangling_symlink", fs(lambda r: link(r / "train/happy/x.jpg", "gone.jpg")), Q, "dangling_symlink",
         "train/happy/x.jpg"),
    Case("symlink_pointing_out", fs(lambda r: (put(r.parent / "out.jpg", jpeg(4)),
                                             link(r / "train/happy/x.jpg", r.parent / "out.jpg"))),
         Q, "path_escapes_root", "train/happy/x.jpg"),
    Case("symlinked_class_folder_pointing_out", fs(lambda r: (put(r.parent / "elsewhere/y.jpg", jpeg(4)),
                                                            link(r / "train/fear", r.parent / "elsewhere"))),
         Q, "path_escapes_root", "train/fear"),
    Case("symlinked_folder_inside", fs(lambda r: link(r / "train/joy", "happy")), Q, "symlinked_folder",
         "train/joy"),
    Case("symlink_loop", fs(lambda r: link(r / "train/happy/x.jpg", "x.jpg")), Q, "symlink_loop",
         "train/happy/x.jpg"),
    Case("fifo", fs(lambda r: os.mkfifo(r / "train/happy/x.jpg")), Q, "not_a_regular_file", "train/happy/x.jpg"),
    Case("text_file_in_class", file("train/happy/notes.txt", b"hello"), Q, "not_an_image", "train/happy/notes.txt"),
    Case("csv_file_in_class", file("train/happy/labels.csv", b"a,b\n1,2\n"), Q, "not_an_image"),
    Case("zero_byte_image", file("train/happy/x.jpg", b""), Q, "empty_file", "train/happy/x.jpg"),
    Case("truncated_image", file("train/happy/x.jpg", jpeg(5, 80)[:500]), Q, "truncated_or_corrupt_image",
         "train/happy/x.jpg"),
    Case("one_pixel_image", file("train/happy/x.png", tiny_png()), Q, "image_too_small",
         "train/happy/x.png"),
    Case("readme_at_root", file("README.txt", b"my data"), E, "file_outside_split_folders"),
    Case("image_at_root", file("x.jpg"), E, "file_outside_split_folders"),
    Case("ds_store", file("train/happy/.DS_Store", b"\0\0\0\1Bud1"), E, "hidden_or_system_file"),
    Case("thumbs_db", file("train/Thumbs.db", b"\xd0\xcf"), E, "hidden_or_system_file"),
    Case("macosx_folder", file("__MACOSX/train/happy/._a.jpg", b"\0\5\26\7"), E, "hidden_or_system_file"),
    Case("ipynb_checkpoints", file("train/happy/.ipynb_checkpoints/a-checkpoint.jpg"), E, "hidden_or_system_file"),
    Case("non_utf8_file_name", file("train/happy/\udcff\udcfe.jpg"), Q, "file_name_not_utf8",
         "train/happy/\\xff\\xfe.jpg"),
    Case("non_utf8_class_folder", file("train/h\udce4ppy/x.jpg"), Q, "label_outside_class_set",
         "train/h\\xe4ppy/x.jpg"),
    Case("non_utf8_split_folder", file("tr\udce4in/happy/x.jpg"), Q, "unknown_split_folder",
         "tr\\xe4in/happy/x.jpg"),
    Case("folder_1200_deep", deep_file(1200), K, DEEP),
    Case("144_megapixel_png_header", file("train/happy/big.png", png_claiming(12000, 12000)), Q,
         "image_too_large", "train/happy/big.png"),
    Case("empty_class_folder", fs(lambda r: (r / "train/disgust").mkdir()), K, "train/happy/a.jpg"),
    Case("only_unknown_split_folders", only_unknown_splits, R, "no split folders", error=ConfigError),
    Case("only_a_symlinked_split_folder", symlinked_split_only, R, "symlinked split folders are not followed",
         error=ConfigError),
]


@pytest.mark.parametrize("case", params(CASES))
def test_folder_verdict(case, tmp_path):
    if case.name != "folder_1200_deep":
        run_case("folder", case, tmp_path)
        return
    base = Path(tempfile.mkdtemp(prefix="fer-fuzz-deep-"))   # outside pytest's folders: its clean-up (and
    try:                                                     # shutil.rmtree) recurses once per level
        run_case("folder", case, base)
    finally:
        remove_tree(base)


def test_folder_kinds():
    assert kinds(CASES) == len(CASES) >= 40


def test_the_pixel_limit_is_configurable_and_a_bad_one_is_one_line(tmp_path, monkeypatch):
    from pipeline.sources import prepare_source
    from pipeline.specs import load_spec

    root = Folder(tmp_path / "folder").write()                  # three 24 x 24 images: 576 pixels each

    def reasons() -> list[str]:
        result = prepare_source(load_spec("folder"), root, None, work_dir=tmp_path / "cache", progress=False)
        return result.quarantine.column("reason").to_pylist()

    monkeypatch.setenv("FER_MAX_IMAGE_PIXELS", "575")
    assert reasons() == ["image_too_large"] * 3
    monkeypatch.setenv("FER_MAX_IMAGE_PIXELS", "576")
    assert reasons() == []
    monkeypatch.setenv("FER_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="FER_MAX_IMAGE_PIXELS='lots' is not a pixel count"):
        reasons()
