"""RAF-DB (basic): odd label lines and image files in the native layout, each with its verdict."""
from __future__ import annotations

import os
import shutil

import pytest

from pipeline.contract.errors import ConfigError

from .cases import Case, kinds, params, run_case
from .layouts import jpeg, link, put

ODD = "aligned/train_09999_aligned.jpg"
LIST = "list_patition_label.txt"


def line(text: str, image: bool = True):
    """A build step appending one raw label line (and the aligned image of train_09999 when asked)."""
    def build(layout) -> None:
        if image:
            layout.images[ODD] = jpeg(9)
        layout.lines.append(text)
    return build


def styled(*styles: str):
    def build(layout) -> None:
        layout.styles = styles
    return build


def odd_image(data: bytes):
    def build(layout) -> None:
        layout.lines.append("train_09999.jpg 3")
        layout.images[ODD] = data
    return build


def on_disk(make):
    """A build step that writes the layout, then changes the file system with make(layout)."""
    def build(layout) -> None:
        layout.write()
        make(layout)
        layout.write = lambda: layout.root
    return build


def symlink_out(layout) -> None:
    put(layout.root.parent / "outside.jpg", jpeg(40))
    link(layout.root / "Image" / ODD, layout.root.parent / "outside.jpg")
    layout.lines.append("train_09999.jpg 3")


def mid_file_bom(layout) -> None:
    layout.lines[1] = "\ufeff" + layout.lines[1]


def original_variant(layout) -> None:
    layout.variant = "original"
    layout.baseline = [p.replace("aligned/", "original/").replace("_aligned", "") for p in layout.baseline]


Q, E, K, R = "quarantined", "excluded", "kept", "refused"
CASES = [
    Case("plain", lambda L: None, K, "aligned/train_00001_aligned.jpg"),
    Case("original_variant", original_variant, K, "original/train_00001.jpg", spec={"image_variant": "original"}),
    Case("utf8_bom", styled("bom"), K, "aligned/train_00001_aligned.jpg"),
    Case("utf16_bom", styled("utf16"), K, "aligned/train_00001_aligned.jpg"),
    Case("crlf_line_ends", styled("crlf"), K, "aligned/train_00001_aligned.jpg"),
    Case("cr_line_ends", styled("cr"), K, "aligned/train_00001_aligned.jpg"),
    Case("trailing_blank_lines", styled("trailing_blank"), K, "aligned/train_00001_aligned.jpg"),
    Case("blank_lines_between", styled("blank_between", "bom", "crlf"), K, "aligned/train_00001_aligned.jpg"),
    Case("tab_separated", line("train_09999.jpg\t3"), K, ODD),
    Case("spaces_around", line("   train_09999.jpg    3   "), K, ODD),
    Case("bom_in_the_middle", mid_file_bom, K, "aligned/train_00002_aligned.jpg"),
    Case("label_zero", line("train_09999.jpg 0"), Q, "label_outside_class_set", "train_09999.jpg"),
    Case("label_eight", line("train_09999.jpg 8"), Q, "label_outside_class_set", "train_09999.jpg"),
    Case("label_text", line("train_09999.jpg happy"), Q, "label_outside_class_set", "train_09999.jpg"),
    Case("label_missing", line("train_09999.jpg"), Q, "malformed_row", "train_09999.jpg"),
    Case("three_fields", line("train_09999.jpg 3 1"), Q, "malformed_row", "train_09999.jpg"),
    Case("unicode_space_only_line", line("\u00a0\u2028", image=False), Q, "malformed_row", f"{LIST}:4"),
    Case("unknown_split_prefix", line("val_0001.jpg 3", image=False), Q, "unknown_split", "val_0001.jpg"),
    Case("dotdot_name", line("../../../outside.jpg 3", image=False), Q, "path_escapes_root"),
    Case("dotdot_inside_name", line("train_1/../../x.jpg 3", image=False), Q, "path_escapes_root"),
    Case("absolute_name", line("/etc/passwd 3", image=False), Q, "path_escapes_root", "/etc/passwd"),
    Case("symlink_pointing_out", symlink_out, Q, "path_escapes_root", ODD),
    Case("missing_image", line("train_09999.jpg 3", image=False), Q, "missing_file", ODD),
    Case("zero_byte_image", odd_image(b""), Q, "empty_file", ODD),
    Case("truncated_image", odd_image(jpeg(3, 100)[:400]), Q, "truncated_or_corrupt_image", ODD),
    Case("text_as_image", odd_image(b"GIF89 but not really"), Q, "not_an_image", ODD),
    Case("duplicate_line", lambda L: L.lines.append(L.lines[0]), Q, "duplicate_row",
         "aligned/train_00001_aligned.jpg"),
    Case("bad_image_variant", lambda L: None, R, "image_variant", spec={"image_variant": "cropped"},
         error=ConfigError),
    Case("missing_label_file", on_disk(lambda L: os.remove(L.root / "EmoLabel" / LIST)), R, LIST,
         error=ConfigError),
    Case("missing_image_folder", on_disk(lambda L: shutil.rmtree(L.root / "Image" / "aligned")), R,
         "image folder not found", error=ConfigError),
]


@pytest.mark.parametrize("case", params(CASES))
def test_rafdb_verdict(case, tmp_path):
    run_case("rafdb", case, tmp_path)


def test_rafdb_kinds():
    assert kinds(CASES) == len(CASES) >= 25


def test_a_zero_byte_label_file_reads_as_no_rows_and_the_prepare_refuses_in_one_line(tmp_path):
    """The adapter counts no input (no KeyError); the prepare stops before any stage, naming the file."""
    from pipeline.config import load_prepare_config
    from pipeline.contract.errors import DataError
    from pipeline.prepare import run_prepare
    from pipeline.sources import prepare_source
    from pipeline.specs import load_spec

    from .layouts import RafDb

    layout = RafDb(tmp_path / "rafdb")
    layout.lines = []
    root = layout.write()
    (root / "EmoLabel" / LIST).write_bytes(b"")
    result = prepare_source(load_spec("rafdb"), root, None, work_dir=tmp_path / "cache", progress=False)
    assert result.inputs == 0 and result.samples.num_rows == 0 and result.quarantine.num_rows == 0
    config = load_prepare_config(None, ["report=false"], dataset="rafdb", root=str(root))
    with pytest.raises(DataError, match=f"{LIST} list no samples") as raised:
        run_prepare(config, progress=False)
    assert "\n" not in str(raised.value)


def test_every_label_line_quarantined_is_one_line_with_the_reasons(tmp_path):
    from pipeline.config import load_prepare_config
    from pipeline.contract.errors import DataError
    from pipeline.prepare import run_prepare

    from .layouts import RafDb

    layout = RafDb(tmp_path / "rafdb")
    layout.lines = ["train_00001.jpg 9", "test_0001.jpg happy"]
    root = layout.write()
    config = load_prepare_config(None, ["report=false"], dataset="rafdb", root=str(root))
    with pytest.raises(DataError, match=r"none of the 2 inputs .* label_outside_class_set 2"):
        run_prepare(config, progress=False)
