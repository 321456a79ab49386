"""Source adapters on small native-format fixtures, malformed rows included; exact counts checked."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.contract.errors import ConfigError
from pipeline.contract.tables import read_metadata, read_table, vectors_to_numpy
from pipeline.sources import prepare_source
from pipeline.sources.__main__ import main as sources_cli
from pipeline.sources.ferplus import decode_pixels
from pipeline.specs import load_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def write_jpeg(path: Path, seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def landmarks_text(seed: int) -> str:
    return ";".join(f"{v:.2f}" for v in np.random.default_rng(seed).uniform(0, 32, 136))


# ---------------------------------------------------------------- AffectNet
def make_affectnet(root: Path) -> None:
    images = root / "Manually_Annotated_Images"
    def good(name: str, expression: int, seed: int) -> list[str]:
        write_jpeg(images / name, seed)
        return [name, "2", "3", "20", "22", landmarks_text(seed), str(expression), "0.25", "-0.5"]
    train = [
        good("1/neutral.jpg", 0, 1),
        good("1/happy.jpg", 1, 2),
        good("1/contempt.jpg", 7, 3),
        good("2/none.jpg", 8, 4),
        good("2/uncertain.jpg", 9, 5),
        good("2/noface.jpg", 10, 6),
        ["2/nullbox.jpg", "NULL", "NULL", "NULL", "NULL", "", "1", "0.1", "0.1"],
        ["2/negbox.jpg", "1", "1", "-5", "10", "", "1", "0.1", "0.1"],
        ["3/missing.jpg", "1", "1", "10", "10", "", "2", "0.1", "0.1"],
        ["3/empty.jpg", "1", "1", "10", "10", "", "2", "0.1", "0.1"],
        ["3/truncated.jpg", "1", "1", "10", "10", "", "2", "0.1", "0.1"],
        ["3/notimage.jpg", "1", "1", "10", "10", "", "2", "0.1", "0.1"],
        good("3/badlabel.jpg", 13, 7),
        ["1/neutral.jpg", "2", "3", "20", "22", "", "0", "0.25", "-0.5"],   # duplicate row
        ["../escape.jpg", "1", "1", "10", "10", "", "3", "0.1", "0.1"],
    ]
    (images / "3").mkdir(parents=True, exist_ok=True)
    (images / "3/empty.jpg").write_bytes(b"")
    full = write_jpeg(images / "3/truncated.jpg", 9, size=64)
    (images / "3/truncated.jpg").write_bytes(full[: len(full) // 2])
    (images / "3/notimage.jpg").write_text("this is not a picture")
    validation = [good("4/anger.jpg", 6, 8), ["4/short.jpg", "1", "1"]]
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]
    for name, body, with_header in (("training.csv", train, True), ("validation.csv", validation, False)):
        with open(lists / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            if with_header:
                writer.writerow(header)
            writer.writerows(body)


def test_affectnet_counts_exclusions_and_quarantine(tmp_path):
    root = tmp_path / "affectnet"
    make_affectnet(root)
    result = prepare_source("affectnet", root, tmp_path / "out", progress=False)
    summary = result.summary()
    assert summary["samples"] == 4
    assert summary["per_split"]["train"] == {"neutral": 1, "happiness": 1, "sadness": 0, "surprise": 0,
                                             "fear": 0, "disgust": 0, "anger": 0, "contempt": 1}
    assert sum(summary["per_split"]["test"].values()) == 1
    assert summary["exclusions"] == {"none": 1, "uncertain": 1, "no_face": 1}
    assert summary["quarantine"] == {
        "bad_box": 2, "missing_file": 1, "empty_file": 1, "truncated_or_corrupt_image": 1, "not_an_image": 1,
        "label_outside_class_set": 1, "duplicate_row": 1, "path_escapes_root": 1, "malformed_row": 1,
    }
    samples = read_table(tmp_path / "out" / "samples.parquet")
    assert samples.column("sample_id").to_pylist() == [0, 1, 2, 3]
    assert samples.column("split").to_pylist() == ["train", "train", "train", "test"]
    assert samples.column("relpath").to_pylist() == ["1/contempt.jpg", "1/happy.jpg", "1/neutral.jpg", "4/anger.jpg"]
    assert samples.schema.field("given_landmarks").type.list_size == 136
    boxes = vectors_to_numpy(samples.column("given_bbox"))
    np.testing.assert_allclose(boxes[0], [2, 3, 20, 22])
    np.testing.assert_allclose(samples.column("valence").to_numpy(), 0.25)
    assert read_metadata(tmp_path / "out" / "samples.parquet")["exclusions"] == summary["exclusions"]
    assert read_table(tmp_path / "out" / "quarantine.parquet").num_rows == 10


def test_affectnet_seven_class_view_excludes_contempt(tmp_path):
    root = tmp_path / "affectnet"
    make_affectnet(root)
    spec = load_spec("affectnet", overrides={"num_classes": 7})
    result = prepare_source(spec, root, None, progress=False)
    assert result.samples.num_rows == 3
    assert result.exclusions["contempt_outside_7_class_view"] == 1


def test_affectnet_accepts_compressed_layout(tmp_path):
    root = tmp_path / "affectnet"
    make_affectnet(root)
    (root / "Manually_Annotated_compressed").mkdir()
    (root / "Manually_Annotated_Images").rename(root / "Manually_Annotated_compressed" / "Manually_Annotated_Images")
    assert prepare_source("affectnet", root, None, progress=False).samples.num_rows == 4


# ---------------------------------------------------------------- RAF-DB
def test_rafdb_counts(tmp_path):
    root = tmp_path / "rafdb"
    for name, seed in (("train_00001", 1), ("train_00002", 2), ("train_00003", 3), ("test_0001", 4)):
        write_jpeg(root / "Image" / "aligned" / f"{name}_aligned.jpg", seed, size=100)
    (root / "EmoLabel").mkdir()
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "train_00001.jpg 5\ntrain_00002.jpg 4\ntrain_00003.jpg 9\ntrain_00004.jpg\n"
        "test_0001.jpg 7\ntest_0002.jpg 1\ntrain_00001.jpg 5\n"
    )
    summary = prepare_source("rafdb", root, tmp_path / "out", progress=False).summary()
    assert summary["samples"] == 3
    assert summary["per_split"]["train"]["sadness"] == 1 and summary["per_split"]["train"]["happiness"] == 1
    assert summary["per_split"]["test"]["neutral"] == 1
    assert summary["quarantine"] == {"label_outside_class_set": 1, "malformed_row": 1, "missing_file": 1,
                                     "duplicate_row": 1}


# ---------------------------------------------------------------- FERPlus
def make_ferplus(root: Path) -> None:
    root.mkdir(parents=True)
    labels = (FIXTURES / "ferplus_labels_sample.csv").read_text()
    (root / "fer2013new.csv").write_text(labels)
    usages = [line.split(",")[0] for line in labels.splitlines()[1:]]
    rng = np.random.default_rng(0)
    lines = ["emotion,pixels,Usage"]
    for i, usage in enumerate(usages):
        pixels = " ".join(str(v) for v in rng.integers(0, 256, 48 * 48))
        if i == 2:
            pixels = " ".join(["7"] * 100)          # wrong pixel count
        if i == 10:
            pixels = pixels.replace(" ", " x", 1)   # undecodable token
        lines.append(f"0,{pixels},{usage}")
    (root / "fer2013.csv").write_text("\n".join(lines) + "\n")


def test_ferplus_majority_votes_and_exclusions(tmp_path):
    root = tmp_path / "ferplus"
    make_ferplus(root)
    result = prepare_source("ferplus", root, tmp_path / "out", work_dir=tmp_path / "work", progress=False)
    summary = result.summary()
    assert summary["samples"] == 6
    assert {s: sum(c.values()) for s, c in summary["per_split"].items()} == {"train": 3, "val": 2, "test": 1}
    assert summary["exclusions"] == {"no_image_name": 1, "unknown_majority": 1, "not_a_face_majority": 1}
    assert summary["quarantine"] == {"wrong_pixel_count": 1, "undecodable_pixels": 1}
    samples = result.samples.to_pandas().set_index("relpath")
    first = samples.loc["train/fer0000000.png"]
    assert first["source_label"] == "neutral"
    np.testing.assert_allclose(first["votes"], [0.4, 0, 0.1, 0, 0, 0.2, 0.3, 0], atol=1e-6)
    assert samples.loc["val/fer0028638.png", "source_label"] == "neutral"  # 4-4 tie: first column wins
    assert samples.loc["val/fer0028639.png", "label"] == 7                 # contempt
    assert (result.image_root / "train/fer0000000.png").is_file()
    with Image.open(result.image_root / "train/fer0000000.png") as image:
        assert image.size == (48, 48)


def test_ferplus_seven_class_view(tmp_path):
    root = tmp_path / "ferplus"
    make_ferplus(root)
    spec = load_spec("ferplus", overrides={"num_classes": 7})
    result = prepare_source(spec, root, None, work_dir=tmp_path / "work", progress=False)
    assert result.samples.num_rows == 3
    assert result.exclusions["contempt_outside_7_class_view"] == 3
    assert result.samples.schema.field("votes").type.list_size == 7


def test_decode_pixels_errors():
    with pytest.raises(ValueError, match="wrong_pixel_count"):
        decode_pixels("1 2 3")
    with pytest.raises(ValueError, match="undecodable_pixels"):
        decode_pixels("a " * 2304)
    assert decode_pixels(" ".join(["255"] * 2304)).shape == (48, 48)


# ---------------------------------------------------------------- folder
def test_folder_counts_and_aliases(tmp_path):
    root = tmp_path / "mine"
    write_jpeg(root / "train" / "Happy" / "a.jpg", 1)
    write_jpeg(root / "train" / "angry" / "b.jpg", 2)
    write_jpeg(root / "train" / "angry" / "c.jpg", 3)
    write_jpeg(root / "validation" / "neutral" / "d.jpg", 4)
    write_jpeg(root / "train" / "bored" / "e.jpg", 5)
    (root / "train" / "angry" / "f.jpg").write_bytes(b"")
    summary = prepare_source("folder", root, tmp_path / "out", progress=False).summary()
    assert summary["samples"] == 4
    assert summary["per_split"]["train"]["anger"] == 2 and summary["per_split"]["train"]["happiness"] == 1
    assert summary["per_split"]["val"]["neutral"] == 1
    assert summary["quarantine"] == {"label_outside_class_set": 1, "empty_file": 1}


# ---------------------------------------------------------------- configuration errors
def test_configuration_errors_fail_at_once(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown dataset 'afectnet'; valid choices: affectnet"):
        prepare_source("afectnet", tmp_path, None)
    with pytest.raises(ConfigError, match="does not exist"):
        prepare_source("rafdb", tmp_path / "nowhere", None)
    with pytest.raises(ConfigError, match="pass --root DIR or set FER_DATA_ROOT"):
        prepare_source("rafdb", None, None)
    (tmp_path / "rafdb" / "Image" / "aligned").mkdir(parents=True)
    with pytest.raises(ConfigError, match="list_patition_label.txt"):
        prepare_source("rafdb", tmp_path / "rafdb", None)
    monkeypatch.setenv("FER_DATA_ROOT", str(tmp_path))
    (tmp_path / "affectnet" / "Manually_Annotated_Images").mkdir(parents=True)
    with pytest.raises(ConfigError, match="training.csv"):
        prepare_source("affectnet", None, None)


def test_cli_writes_tables_and_prints_summary(tmp_path, capsys):
    root = tmp_path / "rafdb"
    write_jpeg(root / "Image" / "aligned" / "train_00001_aligned.jpg", 1, size=100)
    (root / "EmoLabel").mkdir()
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 4\ntrain_00009.jpg 4\n")
    assert sources_cli(["rafdb", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 samples" in out and "missing_file 1" in out
    assert (tmp_path / "out" / "samples.parquet").is_file() and (tmp_path / "out" / "quarantine.parquet").is_file()
    assert sources_cli(["nosuch", "--out", str(tmp_path / "x")]) == 2
    assert "unknown dataset 'nosuch'" in capsys.readouterr().err


def test_same_inputs_same_fingerprint_and_changes_change_it(tmp_path):
    root = tmp_path / "mine"
    write_jpeg(root / "train" / "happy" / "a.jpg", 1)
    write_jpeg(root / "test" / "sad" / "b.jpg", 2)
    first = prepare_source("folder", root, None, progress=False).fingerprint
    assert prepare_source("folder", root, None, progress=False).fingerprint == first
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    assert prepare_source("folder", moved, None, progress=False).fingerprint == first
    write_jpeg(moved / "train" / "happy" / "a.jpg", 99)   # same name, new content
    assert prepare_source("folder", moved, None, progress=False).fingerprint != first


# ---------------------------------------------------------------- text files, paths, accounting
def test_text_reader_ignores_bom_line_ends_tabs_and_blank_lines(tmp_path):
    from pipeline.sources.base import read_csv_rows

    lines = ["Usage,Image name", "Training,a.png", 'PublicTest,"b.png', "PrivateTest,c.png"]
    variants = {
        "plain": "\n".join(lines).encode(),
        "bom_crlf": b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n  \r\n",
        "utf16": b"\xff\xfe" + "\n".join(lines).encode("utf-16-le"),
        "tabs_cr": "\r".join(line.replace(",", "\t") for line in lines).encode() + b"\r\t\r",
        "blank_between": "\n\n".join(lines).encode() + b"\n",
    }
    expected = [["Usage", "Image name"], ["Training", "a.png"], ["PublicTest", "b.png"], ["PrivateTest", "c.png"]]
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        assert [cells for _, cells in read_csv_rows(tmp_path / name)] == expected, name
    # the stray quote stays in its own line; line numbers are the file's
    assert [n for n, _ in read_csv_rows(tmp_path / "blank_between")] == [1, 3, 5, 7]


def test_unsafe_relpaths_are_named():
    from pipeline.sources.base import normal_relpath, unsafe_relpath

    for bad in ("", "../x.jpg", "a/../../x.jpg", "/etc/passwd", "\\\\server\\x", "C:/x.jpg", "a/./b.jpg",
                "..\\x.jpg", "a\x00b.jpg"):
        assert unsafe_relpath(bad), bad
    for good in ("a.jpg", "1/a.jpg", "a..b.jpg", "my photo.jpg", "~x.jpg"):
        assert unsafe_relpath(good) is None, good
    assert normal_relpath("1//a.jpg") == "1/a.jpg" and normal_relpath("1/a.jpg/") == "1/a.jpg"


def test_ferplus_bom_keeps_pairing_and_count_mismatch_refuses(tmp_path):
    root = tmp_path / "ferplus"
    make_ferplus(root)
    pixels = (root / "fer2013.csv").read_bytes()
    (root / "fer2013.csv").write_bytes(b"\xef\xbb\xbf" + pixels.replace(b"\n", b"\r\n"))
    result = prepare_source("ferplus", root, None, work_dir=tmp_path / "work", progress=False)
    rows = (root / "fer2013.csv").read_text(encoding="utf-8-sig").splitlines()[1:]
    names = [line.split(",")[1] for line in (root / "fer2013new.csv").read_text().splitlines()[1:]]
    for relpath in result.samples.column("relpath").to_pylist():
        i = names.index(relpath.split("/", 1)[1])
        with Image.open(result.image_root / relpath) as image:
            np.testing.assert_array_equal(np.asarray(image), decode_pixels(rows[i].split(",")[1]))
    (root / "fer2013.csv").write_bytes(pixels + b"0," + b"1 " * 2304 + b",Training\n")
    from pipeline.contract.errors import DataError
    with pytest.raises(DataError, match="fer2013.csv has 12 data rows and fer2013new.csv has 11"):
        prepare_source("ferplus", root, None, work_dir=tmp_path / "work", progress=False)


def test_ferplus_cache_never_serves_another_rows_pixels(tmp_path):
    """Same pixel file, label file with two names swapped, same cache: each image follows its own row."""
    root = tmp_path / "ferplus"
    make_ferplus(root)
    first = prepare_source("ferplus", root, None, work_dir=tmp_path / "work", progress=False)
    labels = (root / "fer2013new.csv").read_text()
    swapped = labels.replace("fer0000000.png", "@").replace("fer0000006.png", "fer0000000.png").replace(
        "@", "fer0000006.png")
    (root / "fer2013new.csv").write_text(swapped)
    second = prepare_source("ferplus", root, None, work_dir=tmp_path / "work", progress=False)
    with Image.open(first.image_root / "train/fer0000000.png") as a, \
            Image.open(second.image_root / "train/fer0000006.png") as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_every_input_gets_one_verdict_and_the_cli_says_so(tmp_path, capsys):
    root = tmp_path / "mine"
    write_jpeg(root / "train" / "happy" / "a.jpg", 1)
    write_jpeg(root / "train" / "b.jpg", 2)                    # no class folder
    write_jpeg(root / "trian" / "happy" / "c.jpg", 3)          # misspelt split
    (root / "train" / "happy" / "d.jpg").symlink_to("gone.jpg")
    (root / "README.md").write_text("notes")
    result = prepare_source("folder", root, None, progress=False)
    summary = result.summary()
    assert summary["inputs"] == 5 and summary["samples"] == 1
    assert summary["quarantine"] == {"no_class_folder": 1, "unknown_split_folder": 1, "dangling_symlink": 1}
    assert summary["exclusions"] == {"file_outside_split_folders": 1}
    assert sources_cli(["folder", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "input rows or files: 5" in capsys.readouterr().out
