"""FERPlus: odd label rows, pixel rows and file encodings in the native layout, each with its verdict.

Every kept image is checked against the pixels of its own fer2013.csv row (cases.check_ferplus_pixels),
so a BOM or a blank line that shifted the pairing would fail every case, not only its own.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.contract.errors import ConfigError, DataError

from .cases import Case, kinds, params, row_of, run_case

VOTES = ["0", "9", "0", "0", "0", "0", "0", "0", "1", "0"]


def add(votes: list[str] | None = None, name: str = "fer0099999.png", usage: str = "Training", raw: str = ""):
    """A build step appending one label row (with its own pixel row); `raw` replaces the row text."""
    def build(layout) -> None:
        layout.add(usage, name, votes)
        if raw:
            layout.labels[-1] = raw
    return build


def votes_with(index: int, value: str) -> list[str]:
    return [value if i == index else v for i, v in enumerate(VOTES)]


def styled(labels: tuple = (), pixels: tuple = ()):
    def build(layout) -> None:
        layout.label_styles, layout.pixel_styles = labels, pixels
    return build


def pixel_row(text: str | list[str]):
    """A build step appending a good label row whose pixel row is replaced."""
    def build(layout) -> None:
        layout.add("Training", "fer0099999.png")
        layout.pixels[-1] = text if isinstance(text, str) else ["0", *text]
    return build


def icml_columns(layout) -> None:
    layout.pixel_header = ["emotion", " Usage", " pixels"]
    layout.pixels = [[row[0], row[2], row[1]] for row in layout.pixels]


def no_pixel_header(layout) -> None:
    layout.pixel_header = None


def extra_pixel_row(layout) -> None:
    layout.pixels.append(["0", "1 " * 2304, "Training"])


def extra_label_row(layout) -> None:
    layout.add("Training", "fer0099999.png")
    layout.pixels.pop()


def only_headers(layout) -> None:
    layout.labels, layout.pixels, layout.baseline = [], [], []


def on_disk(path: str):
    def build(layout) -> None:
        layout.write()
        os.remove(layout.root / path)
        layout.write = lambda: layout.root
    return build


def odd_kept(result) -> None:
    row = row_of(result, "train/fer0099999.png")
    assert row["source_label"] == "happiness"
    np.testing.assert_allclose(row["votes"], [0, 1, 0, 0, 0, 0, 0, 0], atol=1e-6)  # unknown/NF are no class


def tie_first_column(result) -> None:
    assert row_of(result, "train/fer0099999.png")["source_label"] == "neutral"


Q, E, K, R = "quarantined", "excluded", "kept", "refused"
N = "fer0099999.png"
CASES = [
    Case("plain", lambda L: None, K, "train/fer0000000.png"),
    Case("utf8_bom_on_pixels", styled(pixels=("bom",)), K, "train/fer0000000.png"),
    Case("utf8_bom_on_labels", styled(labels=("bom",)), K, "train/fer0000000.png"),
    Case("utf8_bom_on_both", styled(("bom",), ("bom",)), K, "train/fer0000000.png"),
    Case("utf16_pixels", styled(pixels=("utf16",)), K, "train/fer0000000.png"),
    Case("crlf_both", styled(("crlf",), ("crlf",)), K, "train/fer0000000.png"),
    Case("crlf_labels_only", styled(labels=("crlf", "bom")), K, "train/fer0000000.png"),
    Case("tab_delimited_pixels", styled(pixels=("tabs",)), K, "train/fer0000000.png"),
    Case("trailing_blank_lines_in_one_file", styled(pixels=("trailing_blank",)), K, "train/fer0000000.png"),
    Case("blank_lines_between_pixel_rows", styled(pixels=("blank_between",)), K, "train/fer0000000.png"),
    Case("pixels_without_header", no_pixel_header, K, "train/fer0000000.png"),
    Case("icml_column_order", icml_columns, K, "train/fer0000000.png"),
    Case("new_row_kept", add(), K, f"train/{N}", check=odd_kept),
    Case("real_row_with_nine_votes", add(["2", "0", "0", "5", "1", "1", "0", "0", "0", "0"]), K, f"train/{N}"),
    Case("tie_goes_to_first_column", add(["4", "0", "0", "0", "0", "0", "4", "0", "2", "0"]), K, f"train/{N}",
         check=tie_first_column),
    Case("spreadsheet_trailing_empty_cells", add(raw=f"Training,{N}," + ",".join(VOTES) + ",,"), K, f"train/{N}"),
    Case("float_written_votes", add(["0.0", "9.0", "0", "0", "0", "0", "0", "0", "1.0", "0"]), K, f"train/{N}"),
    Case("all_zero_votes", add(["0"] * 10), Q, "bad_votes", N),
    Case("negative_vote", add(votes_with(0, "-1")), Q, "bad_votes", N),
    Case("nan_vote", add(votes_with(2, "nan")), Q, "bad_votes", N),
    Case("infinite_vote", add(votes_with(1, "inf")), Q, "bad_votes", N),
    Case("overflowing_vote", add(votes_with(1, "1e400")), Q, "bad_votes", N),
    Case("non_integer_vote", add(votes_with(1, "2.5")), Q, "bad_votes", N),
    Case("empty_vote_cell", add(votes_with(3, "")), Q, "bad_votes", N),
    Case("text_vote", add(votes_with(3, "x")), Q, "bad_votes", N),
    Case("no_image_name", add(name=""), E, "no_image_name", count=2),
    Case("unknown_majority", add(["1", "0", "0", "0", "0", "0", "0", "0", "9", "0"]), E, "unknown_majority", count=2),
    Case("not_a_face_majority", add(["0", "0", "0", "0", "0", "0", "0", "0", "0", "10"]), E,
         "not_a_face_majority", count=2),
    Case("contempt_in_7_class_view", add(["0", "0", "0", "0", "0", "0", "0", "9", "0", "0"]), E,
         "contempt_outside_7_class_view", count=4, spec={"num_classes": 7}, baseline=False),
    Case("unknown_usage", add(usage="Validation"), Q, "unknown_split", N),
    Case("dotdot_name", add(name="../../../../escaped.png"), Q, "path_escapes_root"),
    Case("dotdot_inside_name", add(name="a/../../escaped.png"), Q, "path_escapes_root"),
    Case("absolute_name", add(name="/tmp/escaped-ferplus.png"), Q, "path_escapes_root", "/tmp/escaped-ferplus.png"),
    Case("nul_in_name", add(name="fer\x00.png"), Q, "path_escapes_root"),
    Case("name_too_long", add(name="f" * 300 + ".png"), Q, "bad_image_name"),
    Case("duplicate_name", add(name="fer0000000.png"), Q, "duplicate_row", "train/fer0000000.png"),
    Case("short_label_row", add(raw=f"Training,{N},1,2"), Q, "malformed_row", N),
    Case("long_label_row", add(raw=f"Training,{N}," + ",".join(VOTES) + ",3"), Q, "malformed_row", N),
    Case("usage_mismatch_between_files", pixel_row(["1 " * 2304, "PublicTest"]), Q, "usage_mismatch", f"train/{N}"),
    Case("wrong_pixel_count", pixel_row(["7 " * 100, "Training"]), Q, "wrong_pixel_count", f"train/{N}"),
    Case("pixel_value_256", pixel_row(["256 " * 2304, "Training"]), Q, "undecodable_pixels", f"train/{N}"),
    Case("pixel_token_text", pixel_row(["x " * 2304, "Training"]), Q, "undecodable_pixels", f"train/{N}"),
    Case("pixel_float_token", pixel_row(["1.5 " * 2304, "Training"]), Q, "undecodable_pixels", f"train/{N}"),
    Case("empty_pixel_field", pixel_row(["", "Training"]), Q, "missing_pixels", f"train/{N}"),
    Case("pixel_row_one_field", pixel_row("0"), Q, "missing_pixels", f"train/{N}"),
    Case("separator_only_pixel_row", pixel_row(",,"), Q, "missing_pixels", f"train/{N}"),
    Case("one_more_pixel_row", extra_pixel_row, R, r"fer2013\.csv has 12 data rows and fer2013new\.csv has 11",
         error=DataError),
    Case("one_more_label_row", extra_label_row, R, r"fer2013\.csv has 11 data rows and fer2013new\.csv has 12",
         error=DataError),
    Case("only_headers", only_headers, R, "holds no label rows", error=DataError),
    Case("missing_pixel_file", on_disk("fer2013.csv"), R, "pixels_file", error=ConfigError),
    Case("missing_label_file", on_disk("fer2013new.csv"), R, "labels_file", error=ConfigError),
]


@pytest.mark.parametrize("case", params(CASES))
def test_ferplus_verdict(case, tmp_path):
    run_case("ferplus", case, tmp_path)
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path.parent / "escaped.png").exists()


def test_ferplus_kinds():
    assert kinds(CASES) == len(CASES) >= 45
