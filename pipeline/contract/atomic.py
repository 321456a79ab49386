"""The one atomic write: a file (or a folder) is written under a hidden temporary name beside its target and
renamed into place, so a reader, or a run killed midway, sees the whole old file or the whole new one.

    with atomic_path(path) as tmp:          # tmp = <dir>/.<name>.<pid>.tmp
        pq.write_table(table, tmp)
    write_text(path, text)                  # the same, for text
    write_json(path, record)                # sorted keys, 2-space indent, newline at the end

Temporary names always have the form `.<name>.<pid>.tmp[suffix]`: hidden (never listed as an output) and
recognisable as a leftover of process <pid>. A failed write removes its temporary file.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp"


def temporary_name(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_MARK}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "", directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, rename it to `path`.

    `suffix`: for writers that append their own extension (np.save adds `.npy`). `directory`: the
    temporary path is a fresh folder; it is renamed only when `path` does not exist yet (another writer
    that finished the same folder first wins, and this one's copy is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, suffix)
    if directory:
        _remove(tmp)
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not directory:
        os.replace(tmp, path)
        return
    try:
        os.rename(tmp, path)
    except OSError:             # the folder exists: another writer finished it first
        _remove(tmp)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, record: object) -> Path:
    return write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
