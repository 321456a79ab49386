"""Tiny datasets in their native layouts (AffectNet, RAF-DB, FERPlus, folder) for the fuzz suite.

Each layout holds its rows and images in memory; a case edits them (or the file system) and `write()`
puts them on disk. `baseline` lists the relpaths that must be kept whatever the case adds, and
`expected_inputs()` counts the input rows (or files) independently of the adapter.
"""
from __future__ import annotations

import codecs
import functools
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STYLES = ("bom", "utf16", "crlf", "cr", "trailing_blank", "blank_between", "tabs")


def jpeg(seed: int, size: int = 24, mode: str = "RGB") -> bytes:
    """A small random JPEG (seeded)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)  # [S, S, 3]
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, followed by one tiny IDAT: decoding it would fail
    as truncated, so only a check made on the header, before decoding, can call it too large."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)       # 8-bit grey, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def deep_folder(base: Path, depth: int) -> Path:
    """`base`/d/d/.../d, `depth` levels, made one level at a time (os.makedirs recurses once per level)."""
    base.mkdir(parents=True, exist_ok=True)
    path = str(base)
    for _ in range(depth):
        path += "/d"
        os.mkdir(path)
    return Path(path)


def remove_tree(base: Path) -> None:
    """shutil.rmtree without recursion (it recurses once per level, so a 1,200-deep tree breaks it)."""
    stack, folders = [str(base)], []
    while stack:
        folder = stack.pop()
        folders.append(folder)
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)


def put(path: Path, data: bytes | str) -> Path:
    """Write a file, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def link(path: Path, target: str | Path) -> Path:
    """A symlink at `path` (its folders created) pointing at `target` (relative or absolute)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


def render(lines: list[str], styles: tuple[str, ...] = ()) -> bytes:
    """Lines -> file bytes in the given styles (BOM, UTF-16, CRLF, CR, blank lines, tabs for commas)."""
    if "tabs" in styles:
        lines = [line.replace(",", "\t") for line in lines]
    if "blank_between" in styles:
        lines = [part for line in lines for part in (line, "  \t")]
    end = "\r\n" if "crlf" in styles else "\r" if "cr" in styles else "\n"
    text = end.join(lines) + end
    if "trailing_blank" in styles:
        text += end + " " + end + "\t" + end + end
    if "utf16" in styles:
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    return (codecs.BOM_UTF8 if "bom" in styles else b"") + text.encode("utf-8", "surrogateescape")  # \udcXX: byte XX


class AffectNet:
    """Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/."""

    adapter = "affectnet"
    HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal")

    def __init__(self, root: Path) -> None:
        self.root, self.images, self.header, self.styles = root, {}, True, ()
        self.image_dir = "Manually_Annotated_Images"
        self.train = [self.row("1/a.jpg", "0", seed=1), self.row("1/b.jpg", "1", seed=2)]
        self.val = [self.row("2/c.jpg", "6", seed=3)]
        self.baseline = ["1/a.jpg", "1/b.jpg", "2/c.jpg"]
        self.lines: dict[str, list[str]] = {}

    @property
    def image_root(self) -> Path:
        return self.root / self.image_dir

    def row(self, name: str, expression: str = "1", box: tuple = ("2", "3", "20", "22"), landmarks: str | None = None,
            va: tuple = ("0.25", "-0.5"), seed: int = 7, image: bool = True) -> list[str]:
        """One CSV row; its image is written too unless image=False."""
        if image:
            self.images[name] = jpeg(seed)
        points = np.random.default_rng(seed).uniform(0, 24, 136)  # [136] x, y interleaved
        text = ";".join(f"{v:.2f}" for v in points) if landmarks is None else landmarks
        return [name, *box, text, expression, *va]

    def write(self) -> Path:
        for name, data in self.images.items():
            put(self.image_root / name, data)
        lists = self.root / "Manually_Annotated_file_lists"
        for filename, rows in (("training.csv", self.train), ("validation.csv", self.val)):
            lines = ([",".join(self.HEADER)] if self.header else []) + [_csv_line(r) for r in rows]
            self.lines[filename] = lines
            put(lists / filename, render(lines, self.styles))
        return self.root

    def expected_inputs(self) -> int:
        return len(self.train) + len(self.val)


def _csv_line(row: list[str] | str) -> str:
    """A row as written: cells joined by commas (a str is a raw line, written as it is)."""
    return row if isinstance(row, str) else ",".join(row)


class RafDb:
    """EmoLabel/list_patition_label.txt + Image/aligned/<stem>_aligned.jpg (or Image/original/<name>)."""

    adapter = "rafdb"

    def __init__(self, root: Path) -> None:
        self.root, self.images, self.styles, self.variant = root, {}, (), "aligned"
        self.lines = [self.line("train_00001.jpg", "5", 1), self.line("train_00002.jpg", "4", 2),
                      self.line("test_0001.jpg", "7", 3)]
        self.baseline = ["aligned/train_00001_aligned.jpg", "aligned/train_00002_aligned.jpg",
                         "aligned/test_0001_aligned.jpg"]

    def line(self, name: str, label: str, seed: int = 7, image: bool = True) -> str:
        if image:
            stem = name.rsplit(".", 1)[0]
            self.images[f"aligned/{stem}_aligned.jpg"] = jpeg(seed)
            self.images[f"original/{name}"] = jpeg(seed + 100)
        return f"{name} {label}"

    def write(self) -> Path:
        for relpath, data in self.images.items():
            put(self.root / "Image" / relpath, data)
        (self.root / "Image" / "aligned").mkdir(parents=True, exist_ok=True)
        put(self.root / "EmoLabel" / "list_patition_label.txt", render(self.lines, self.styles))
        return self.root

    def expected_inputs(self) -> int:
        return len(self.lines)


@functools.cache
def pixel_text(seed: int) -> str:
    """A distinct 48x48 pixel string per row, so a mis-paired row is caught by content."""
    return " ".join(str(v) for v in np.random.default_rng(1000 + seed).integers(0, 256, 48 * 48))


class FerPlus:
    """fer2013.csv (emotion, pixels, Usage) + fer2013new.csv (real FER+ label rows from the fixture)."""

    adapter = "ferplus"
    PIXEL_HEADER = ("emotion", "pixels", "Usage")

    def __init__(self, root: Path) -> None:
        lines = (FIXTURES / "ferplus_labels_sample.csv").read_text().splitlines()
        self.root, self.label_header = root, lines[0].split(",")
        self.labels = [line.split(",") for line in lines[1:]]
        self.pixels = [["0", pixel_text(i), row[0]] for i, row in enumerate(self.labels)]
        self.pixel_header: list[str] | None = list(self.PIXEL_HEADER)
        self.label_styles: tuple[str, ...] = ()
        self.pixel_styles: tuple[str, ...] = ()
        self.baseline = [f"{_SPLITS[r[0]]}/{r[1]}" for r in self.labels
                         if r[1] and _majority(r) not in ("unknown", "NF")]
        self.expected: dict[str, np.ndarray] = {}

    def add(self, usage: str, name: str, votes: list[str] | None = None) -> list[str]:
        """Append a label row and its own pixel row; returns the label row for editing."""
        row = [usage, name, *(votes or ["0", "9", "0", "0", "0", "0", "0", "0", "1", "0"])]
        self.labels.append(row)
        self.pixels.append(["0", pixel_text(len(self.pixels)), usage])
        return row

    def write(self) -> Path:
        header = [",".join(self.pixel_header)] if self.pixel_header else []
        put(self.root / "fer2013.csv", render(header + [_csv_line(r) for r in self.pixels], self.pixel_styles))
        put(self.root / "fer2013new.csv", render([",".join(self.label_header)] + [_csv_line(r) for r in self.labels],
                                                 self.label_styles))
        self.expected = {}
        column = [h.strip().lower() for h in self.pixel_header].index("pixels") if self.pixel_header else 1
        for labels, pixels in zip(self.labels, self.pixels):
            labels = labels if isinstance(labels, list) else labels.split(",")
            if len(labels) > 1 and labels[0] in _SPLITS and isinstance(pixels, list) and len(pixels) > column:
                self.expected.setdefault(f"{_SPLITS[labels[0]]}/{labels[1]}", pixels[column])
        return self.root

    def expected_inputs(self) -> int:
        return len(self.labels)


_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")


def _majority(row: list[str]) -> str:
    counts = [float(v) for v in row[2:12]]
    return _VOTES[int(np.argmax(counts))]


class Folder:
    """<root>/<split>/<class>/<image>, a user's own data."""

    adapter = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = {"train/happy/a.jpg": jpeg(1), "train/angry/b.jpg": jpeg(2), "test/Sad/c.jpg": jpeg(3)}
        self.baseline = list(self.files)

    def write(self) -> Path:
        for relpath, data in self.files.items():
            put(self.root / relpath, data)
        return self.root

    def expected_inputs(self) -> int:
        """Every entry below the root but real folders, links not followed: files, symlinks (dangling too),
        FIFOs. Walked with a stack, as folders nest thousands deep in some cases."""
        count, stack = 0, [self.root]
        while stack:
            with os.scandir(stack.pop()) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        count += 1
        return count


LAYOUTS = {"affectnet": AffectNet, "rafdb": RafDb, "ferplus": FerPlus, "folder": Folder}
