"""AffectNet: odd rows and files in the native layout, each with its verdict."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from pipeline.contract.errors import ConfigError
from pipeline.contract.tables import vectors_to_numpy

from .cases import Case, kinds, params, row_of, run_case
from .layouts import jpeg, link, put

T = "training.csv"


def add(row_args: dict | None = None, **kw):
    """A build step appending one training row (its image written unless image=False)."""
    def build(layout) -> None:
        layout.train.append(layout.row(**{"name": "3/odd.jpg", **(row_args or {}), **kw}))
    return build


def raw(line: str, image: str | None = None):
    """A build step appending one raw training line (written as it is), with an image when named."""
    def build(layout) -> None:
        if image:
            layout.images[image] = jpeg(5)
        layout.train.append(line)
    return build


def styled(*styles: str, header: bool = True):
    def build(layout) -> None:
        layout.styles, layout.header = styles, header
    return build


def no_landmarks(result) -> None:
    samples = result.samples
    index = samples.column("relpath").to_pylist().index("3/odd.jpg")
    assert not samples.column("given_landmarks").is_valid()[index].as_py()


def null_va(result) -> None:
    row = row_of(result, "3/odd.jpg")
    assert np.isnan(row["valence"]) and row["arousal"] == pytest.approx(-0.5)


def box_kept(result) -> None:
    index = result.samples.column("relpath").to_pylist().index("1/a.jpg")
    np.testing.assert_allclose(vectors_to_numpy(result.samples.column("given_bbox"))[index], [2, 3, 20, 22])


def moved_images(layout) -> None:
    layout.image_dir = "Manually_Annotated_compressed/Manually_Annotated_Images"


def escape_with_image(name: str):
    """A row naming a real image outside the dataset root (it must not be read)."""
    def build(layout) -> None:
        put(layout.root.parent / "outside.jpg", jpeg(50))
        layout.train.append(layout.row(name, image=False))
    return build


def symlink_out(layout) -> None:
    put(layout.root.parent / "outside.jpg", jpeg(51))
    link(layout.image_root / "3/odd.jpg", layout.root.parent / "outside.jpg")
    layout.train.append(layout.row("3/odd.jpg", image=False))


def symlink_loop(layout) -> None:
    link(layout.image_root / "3/odd.jpg", "odd.jpg")
    layout.train.append(layout.row("3/odd.jpg", image=False))


def fifo(layout) -> None:
    (layout.image_root / "3").mkdir(parents=True, exist_ok=True)
    os.mkfifo(layout.image_root / "3/odd.jpg")
    layout.train.append(layout.row("3/odd.jpg", image=False))


def folder_as_image(layout) -> None:
    (layout.image_root / "3/odd.jpg").mkdir(parents=True)
    layout.train.append(layout.row("3/odd.jpg", image=False))


def with_image(data: bytes):
    def build(layout) -> None:
        layout.train.append(layout.row("3/odd.jpg"))
        layout.images["3/odd.jpg"] = data
    return build


def drop(path: str):
    def build(layout) -> None:
        layout.write()
        os.remove(layout.root / path)
        layout.write = lambda: layout.root            # keep the removal
    return build


def no_image_dir(layout) -> None:
    layout.write()
    shutil.rmtree(layout.image_root)
    layout.write = lambda: layout.root


Q, E, K, R = "quarantined", "excluded", "kept", "refused"
CASES = [
    Case("header_present", styled(), K, "1/a.jpg", check=box_kept),
    Case("header_absent", styled(header=False), K, "1/a.jpg", check=box_kept),
    Case("compressed_image_layout", moved_images, K, "1/a.jpg"),
    Case("utf8_bom_with_header", styled("bom"), K, "1/a.jpg"),
    Case("utf8_bom_without_header", styled("bom", header=False), K, "1/a.jpg", check=box_kept),
    Case("utf16_bom", styled("utf16"), K, "1/a.jpg"),
    Case("crlf_line_ends", styled("crlf"), K, "1/a.jpg"),
    Case("cr_line_ends", styled("cr", header=False), K, "1/a.jpg"),
    Case("tab_delimited", styled("tabs"), K, "1/a.jpg", check=box_kept),
    Case("trailing_blank_lines", styled("trailing_blank"), K, "1/a.jpg"),
    Case("blank_lines_between_rows", styled("blank_between", "crlf"), K, "1/a.jpg"),
    Case("spreadsheet_trailing_empty_cells", lambda L: L.train.append(L.row("3/odd.jpg") + ["", ""]), K, "3/odd.jpg"),
    Case("spaces_around_cells", raw(" 3/odd.jpg , 2, 3 ,20,22,, 1 ,0.1,0.2", "3/odd.jpg"), K, "3/odd.jpg"),
    Case("empty_landmarks_kept_without_points", add(landmarks=""), K, "3/odd.jpg", check=no_landmarks),
    Case("null_landmarks_kept_without_points", add(landmarks="NULL"), K, "3/odd.jpg", check=no_landmarks),
    Case("valence_minus_two_stored_null", add(va=("-2", "-0.5")), K, "3/odd.jpg", check=null_va),
    Case("separator_only_row", raw(",,,,,,,,"), E, "empty_row"),
    Case("repeated_header", raw(",".join(["subDirectory_filePath"] + ["x"] * 8)), E, "repeated_header"),
    Case("expression_none", add(expression="8"), E, "none"),
    Case("expression_uncertain", add(expression="9"), E, "uncertain"),
    Case("expression_no_face", add(expression="10"), E, "no_face"),
    Case("contempt_in_7_class_view", add(expression="7"), E, "contempt_outside_7_class_view",
         spec={"num_classes": 7}),
    Case("expression_out_of_range", add(expression="13"), Q, "label_outside_class_set", "3/odd.jpg"),
    Case("expression_empty", add(expression=""), Q, "label_outside_class_set", "3/odd.jpg"),
    Case("expression_text", add(expression="happy"), Q, "label_outside_class_set", "3/odd.jpg"),
    Case("null_box", add(box=("NULL",) * 4), Q, "bad_box", "3/odd.jpg"),
    Case("non_numeric_box", add(box=("2", "abc", "20", "22")), Q, "bad_box", "3/odd.jpg"),
    Case("negative_box_origin", add(box=("-4", "3", "20", "22")), Q, "bad_box", "3/odd.jpg"),
    Case("negative_box_width", add(box=("2", "3", "-20", "22")), Q, "bad_box", "3/odd.jpg"),
    Case("zero_box_height", add(box=("2", "3", "20", "0")), Q, "bad_box", "3/odd.jpg"),
    Case("nan_box", add(box=("2", "3", "nan", "22")), Q, "bad_box", "3/odd.jpg"),
    Case("infinite_box", add(box=("2", "inf", "20", "22")), Q, "bad_box", "3/odd.jpg"),
    Case("landmarks_67_points", add(landmarks=";".join(["1.0"] * 134)), Q, "bad_landmarks", "3/odd.jpg"),
    Case("landmarks_69_points", add(landmarks=";".join(["1.0"] * 138)), Q, "bad_landmarks", "3/odd.jpg"),
    Case("landmarks_non_numeric", add(landmarks=";".join(["1.0"] * 135 + ["x"])), Q, "bad_landmarks", "3/odd.jpg"),
    Case("landmarks_nan", add(landmarks=";".join(["1.0"] * 135 + ["nan"])), Q, "bad_landmarks", "3/odd.jpg"),
    Case("too_few_fields", raw("3/odd.jpg,1,1"), Q, "malformed_row", "3/odd.jpg"),
    Case("too_many_fields", lambda L: L.train.append(L.row("3/odd.jpg") + ["extra"]), Q, "malformed_row",
         "3/odd.jpg"),
    Case("empty_path", add(name="", image=False), Q, "malformed_row", f"{T}:4"),
    Case("stray_quote_stays_in_its_row", raw('"3/odd.jpg,2,3,20,22,,1,0.1,0.1'), Q, "malformed_row"),
    Case("nul_in_path", add(name="3/od\x00d.jpg", image=False), Q, "path_escapes_root"),
    Case("dotdot_path", escape_with_image("../../outside.jpg"), Q, "path_escapes_root", "../../outside.jpg"),
    Case("absolute_path", lambda L: escape_with_image(str(L.root.parent / "outside.jpg"))(L), Q,
         "path_escapes_root"),
    Case("symlink_pointing_out", symlink_out, Q, "path_escapes_root", "3/odd.jpg"),
    Case("symlink_loop", symlink_loop, Q, "path_escapes_root", "3/odd.jpg"),
    Case("missing_image", add(image=False), Q, "missing_file", "3/odd.jpg"),
    Case("zero_byte_image", with_image(b""), Q, "empty_file", "3/odd.jpg"),
    Case("truncated_image", with_image(jpeg(9, 64)[:300]), Q, "truncated_or_corrupt_image", "3/odd.jpg"),
    Case("text_as_image", with_image(b"not a picture"), Q, "not_an_image", "3/odd.jpg"),
    Case("folder_as_image", folder_as_image, Q, "not_a_regular_file", "3/odd.jpg"),
    Case("fifo_as_image", fifo, Q, "not_a_regular_file", "3/odd.jpg"),
    Case("duplicate_row", lambda L: L.train.append(list(L.train[0])), Q, "duplicate_row", "1/a.jpg"),
    Case("duplicate_by_double_slash", add(name="1//a.jpg", image=False), Q, "duplicate_row", "1/a.jpg"),
    Case("same_image_in_both_files", lambda L: L.val.append(list(L.train[1])), Q, "duplicate_row", "1/b.jpg"),
    Case("invalid_utf8_in_path", lambda L: L.train.append("3/\udcff.jpg,2,3,20,22,,1,0.1,0.1"), Q, "missing_file"),
    Case("box_wholly_right_of_image", add(box=("30", "2", "10", "10")), Q, "box_outside_image", "3/odd.jpg"),
    Case("box_wholly_below_image", add(box=("2", "24", "10", "10")), Q, "box_outside_image", "3/odd.jpg"),
    Case("box_partly_outside_kept", add(box=("20", "20", "10", "10")), K, "3/odd.jpg"),
    Case("no_image_folder", no_image_dir, R, "no AffectNet image folder", error=ConfigError),
    Case("missing_validation_csv", drop("Manually_Annotated_file_lists/validation.csv"), R, "validation.csv",
         error=ConfigError),
]


@pytest.mark.parametrize("case", params(CASES))
def test_affectnet_verdict(case, tmp_path):
    run_case("affectnet", case, tmp_path)


def test_affectnet_kinds():
    assert kinds(CASES) == len(CASES) >= 50
