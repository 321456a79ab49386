"""Property: randomly corrupting rows of an adapter's files never loses or duplicates a row.

A seeded loop (no extra dependency): each trial writes a small dataset in its native layout, corrupts a
few random rows (deleted or inserted characters, junk fields, stray quotes, NULs, BOMs, newlines, blanked,
duplicated or garbage rows) and sometimes the whole file (BOM, CRLF, trailing blank lines), then checks:
- inputs counted independently (non-blank lines, minus the header) = kept + quarantined + excluded;
- kept relpaths are unique;
- every row the corruption did not touch (and whose name no touched row mentions) is kept, intact:
  same label, same box (AffectNet), same pixels (FERPlus: only where the pairing by position survives;
  where the two files end up with different row counts the adapter must refuse, naming both counts).
The folder adapter gets the same treatment with files instead of rows.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.contract.errors import DataError
from pipeline.contract.tables import vectors_to_numpy
from pipeline.sources import prepare_source
from pipeline.sources.ferplus import decode_pixels

from .layouts import jpeg, link, pixel_text, put, render

TRIALS = 24
JUNK = [",", ";", '"', "\t", " ", "\x00", "\ufeff", "\u00e9", "\r", "\n", "\r\n", "../", "/", "-", "9", "NaN",
        "\udcff", "\u2028"]
FIELD_JUNK = ["", "NULL", "nan", "-1", "1e400", "abc", "../x", "/abs", "999", "2.5", '"', "inf"]
BLANK = " \t\r\n\x0b\x0c\ufeff"


def corrupt_text(rng: np.random.Generator, text: str, sep: str) -> str:
    """One random edit of one row."""
    op = rng.integers(7)
    at = int(rng.integers(len(text) + 1))
    if op == 0:
        return text[:at] + text[at + 1:]
    if op == 1:
        return text[:at] + JUNK[rng.integers(len(JUNK))] + text[at:]
    if op == 2:
        return text[:at]
    if op == 3:
        return " \t"
    fields = text.split(sep)
    i, j = rng.integers(len(fields), size=2)
    if op == 4:
        fields[i], fields[j] = fields[j], fields[i]
    elif op == 5:
        fields[i] = FIELD_JUNK[rng.integers(len(FIELD_JUNK))]
    else:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, size=int(rng.integers(1, 40))))
    return sep.join(fields)


def corrupt_rows(rng: np.random.Generator, rows: list[str], sep: str, count: int) -> list[tuple[int | None, str]]:
    """[(original index or None when touched, text)]: `count` random rows edited, some duplicated."""
    entries: list[tuple[int | None, str]] = [(i, row) for i, row in enumerate(rows)]
    for _ in range(count):
        k = int(rng.integers(len(entries)))
        _, text = entries[k]
        if rng.random() < 0.15:
            entries.insert(k + 1, (None, text))              # a duplicated row: the first copy stays intact
        else:
            entries[k] = (None, corrupt_text(rng, text, sep))
    return entries


def file_styles(rng: np.random.Generator) -> tuple[str, ...]:
    return tuple(s for s in ("bom", "crlf", "trailing_blank") if rng.random() < 0.3)


def positions(entries: list[tuple[int | None, str]]) -> tuple[int, dict[int, int]]:
    """(data lines, {original index: line position}) for the entries as written."""
    count, where = 0, {}
    for index, text in entries:
        lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip(BLANK)]
        if index is not None and lines:
            where[index] = count
        count += len(lines)
    return count, where


def intact(entries: list[tuple[int | None, str]], names: list[str]) -> set[int]:
    """Untouched rows whose name appears in no touched row (so no duplicate verdict can claim it)."""
    touched = " ".join(text for index, text in entries if index is None)
    return {i for i, _ in entries if i is not None and names[i] not in touched}


def accounting(result, inputs: int) -> set[str]:
    kept = result.samples.column("relpath").to_pylist()
    assert result.inputs == inputs
    assert len(kept) + result.quarantine.num_rows + sum(result.exclusions.values()) == inputs
    assert len(set(kept)) == len(kept)
    return set(kept)


def kept_rows(result) -> dict[str, int]:
    return dict(zip(result.samples.column("relpath").to_pylist(), result.samples.column("label").to_pylist()))


# ---------------------------------------------------------------- AffectNet
def affectnet_trial(seed: int, base: Path) -> None:
    rng = np.random.default_rng(seed)
    root = base / "affectnet"
    names = [f"{i % 3}/img{i:02d}.jpg" for i in range(12)]
    rows = [f"{name},{i},{i + 1},{10 + i},{11 + i},,{i % 7},0.1,-0.1" for i, name in enumerate(names)]
    for i, name in enumerate(names):
        put(root / "Manually_Annotated_Images" / name, jpeg(i, 16))
    entries = corrupt_rows(rng, rows, ",", int(rng.integers(1, 5)))
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    lists = root / "Manually_Annotated_file_lists"
    put(lists / "training.csv", render([header] + [t for _, t in entries], file_styles(rng)))
    put(lists / "validation.csv", render([], ()))
    result = prepare_source("affectnet", root, None, work_dir=base / "cache", progress=False)
    kept = accounting(result, positions(entries)[0])
    boxes = dict(zip(result.samples.column("relpath").to_pylist(),
                     vectors_to_numpy(result.samples.column("given_bbox"))))
    for i in intact(entries, names):
        assert names[i] in kept, f"seed {seed}: intact row {names[i]} lost"
        np.testing.assert_allclose(boxes[names[i]], [i, i + 1, 10 + i, 11 + i])
        assert kept_rows(result)[names[i]] == i % 7


# ---------------------------------------------------------------- RAF-DB
def rafdb_trial(seed: int, base: Path) -> None:
    rng = np.random.default_rng(seed)
    root = base / "rafdb"
    names = [f"{'train' if i % 4 else 'test'}_{i:05d}.jpg" for i in range(12)]
    for i, name in enumerate(names):
        put(root / "Image" / "aligned" / f"{name[:-4]}_aligned.jpg", jpeg(i, 16))
    rows = [f"{name} {1 + i % 7}" for i, name in enumerate(names)]
    entries = corrupt_rows(rng, rows, " ", int(rng.integers(1, 5)))
    put(root / "EmoLabel" / "list_patition_label.txt", render([t for _, t in entries], file_styles(rng)))
    result = prepare_source("rafdb", root, None, work_dir=base / "cache", progress=False)
    accounting(result, positions(entries)[0])
    labels = kept_rows(result)
    native_to_label = {"1": 3, "2": 4, "3": 5, "4": 1, "5": 2, "6": 6, "7": 0}
    for i in intact(entries, [n[:-4] for n in names]):
        relpath = f"aligned/{names[i][:-4]}_aligned.jpg"
        assert labels.get(relpath) == native_to_label[str(1 + i % 7)], f"seed {seed}: intact row {names[i]} lost"


# ---------------------------------------------------------------- FERPlus
def ferplus_trial(seed: int, base: Path) -> None:
    rng = np.random.default_rng(seed)
    root = base / "ferplus"
    usages = ("Training", "PublicTest", "PrivateTest")
    names = [f"fer{i:07d}.png" for i in range(12)]
    votes = [[int(v) for v in rng.multinomial(10, [0.5, 0.3, 0.1, 0.1, 0, 0, 0, 0, 0, 0])] for _ in names]
    labels = [f"{usages[i % 3]},{name}," + ",".join(map(str, v)) for i, (name, v) in enumerate(zip(names, votes))]
    pixels = [f"0,{pixel_text(i)},{usages[i % 3]}" for i in range(len(names))]
    label_entries = corrupt_rows(rng, labels, ",", int(rng.integers(0, 4)))
    pixel_entries = corrupt_rows(rng, pixels, ",", int(rng.integers(0, 3)))
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    put(root / "fer2013new.csv", render([header] + [t for _, t in label_entries], file_styles(rng)))
    put(root / "fer2013.csv", render(["emotion,pixels,Usage"] + [t for _, t in pixel_entries], file_styles(rng)))
    (label_count, label_at), (pixel_count, pixel_at) = positions(label_entries), positions(pixel_entries)
    if label_count != pixel_count:
        with pytest.raises(DataError, match=f"has {pixel_count} data rows and fer2013new.csv has {label_count}"):
            prepare_source("ferplus", root, None, work_dir=base / "cache", progress=False)
        return
    result = prepare_source("ferplus", root, None, work_dir=base / "cache", progress=False)
    kept = accounting(result, label_count)
    both = intact(label_entries, names) & intact(pixel_entries, [pixel_text(i)[:40] for i in range(len(names))])
    for i in both:
        if label_at.get(i) != pixel_at.get(i):
            continue                                   # the pairing by position moved: no promise
        relpath = f"{('train', 'val', 'test')[i % 3]}/{names[i]}"
        assert relpath in kept, f"seed {seed}: intact pair {relpath} lost"
        with Image.open(result.image_root / relpath) as image:
            np.testing.assert_array_equal(np.asarray(image), decode_pixels(pixel_text(i)))


# ---------------------------------------------------------------- folder
def folder_trial(seed: int, base: Path) -> None:
    rng = np.random.default_rng(seed)
    root = base / "folder"
    classes = ("happy", "sad", "angry", "neutral")
    files = {f"{('train', 'val', 'test')[i % 3]}/{classes[i % 4]}/f{i:02d}.jpg": jpeg(i, 16) for i in range(12)}
    for relpath, data in files.items():
        put(root / relpath, data)
    touched = set()
    for _ in range(int(rng.integers(1, 5))):
        relpath = sorted(files)[int(rng.integers(len(files)))]
        touched.add(relpath)
        corrupt_file(rng, root, relpath, base)
    result = prepare_source("folder", root, None, work_dir=base / "cache", progress=False)
    count = sum(len(f) + sum(os.path.islink(os.path.join(d, x)) for x in ds) for d, ds, f in os.walk(root))
    kept = accounting(result, count)
    for relpath in set(files) - touched:
        assert relpath in kept, f"seed {seed}: untouched file {relpath} lost"


def corrupt_file(rng: np.random.Generator, root: Path, relpath: str, base: Path) -> None:
    path = root / relpath
    if not path.is_file() or path.is_symlink():
        return
    op = int(rng.integers(9))
    data = path.read_bytes()
    if op == 0:
        path.write_bytes(data[: int(rng.integers(len(data)))])
    elif op == 1:
        path.write_bytes(bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    elif op in (2, 3, 4):
        target = {2: f"train/{path.name}", 3: f"trian/happy/{path.name}", 4: f"train/bored/{path.name}"}[op]
        put(root / target, data)
        path.unlink()
    elif op == 5:
        path.unlink()
        link(path, "missing.jpg")
    elif op == 6:
        path.unlink()
        link(path, put(base / "outside.jpg", data))
    elif op == 7:
        put(path.parent / f".{path.name}", data)
    else:
        put(root / "README.md", "notes")


@pytest.mark.parametrize("trial,trials", [(affectnet_trial, TRIALS), (rafdb_trial, TRIALS),
                                          (ferplus_trial, 2 * TRIALS), (folder_trial, TRIALS)],
                         ids=["affectnet", "rafdb", "ferplus", "folder"])
def test_random_corruption_never_loses_or_duplicates_a_row(trial, trials, tmp_path):
    """FERPlus gets twice the trials: about half of them end in the (expected) row-count refusal."""
    for seed in range(trials):
        trial(seed, tmp_path / f"seed{seed}")
