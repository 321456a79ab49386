"""Folder adapter for a user's own data: <root>/<split>/<class_name>/<image>.

Split folders are matched by name (train, training, val, valid, validation, test, testing, plus the
spec's `splits` folder names); class folder names are matched to canonical names (aliases like happy,
angry, sad accepted; the spec's class_map can add more). Every file below the root gets one verdict,
so kept + quarantined + excluded = files found:
- kept (then validated as an image): a file under <split>/<class>/ (any depth below the class folder);
- quarantined: a file directly under a split folder (`no_class_folder`), under an unknown split folder
  (`unknown_split_folder`) or an unknown class folder (`label_outside_class_set`); a dangling symlink
  (`dangling_symlink`), a symlink loop (`symlink_loop`), a symlink pointing outside the root
  (`path_escapes_root`: never followed), a symlink to a folder (`symlinked_folder`: not followed, so
  no file is listed twice), a FIFO, socket or device (`not_a_regular_file`: never opened);
- excluded and counted: files directly under the root (`file_outside_split_folders`, e.g. a README),
  hidden or system files and folders (`.DS_Store`, `Thumbs.db`, `__MACOSX/`, `.ipynb_checkpoints/`:
  `hidden_or_system_file`) and, in a 7-class view, contempt folders.
Non-image files inside class folders are quarantined by image validation (`not_an_image`).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.contract.classes import CLASS_ALIASES, SPLITS
from pipeline.contract.errors import ConfigError, choices_message
from pipeline.sources.base import ESCAPE_REASON, SourceRecord, SourceScan
from pipeline.specs import DatasetSpec

ADAPTER_VERSION = "1.1"
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
SYSTEM_NAMES = {"thumbs.db", "desktop.ini", "__macosx", "$recycle.bin", "system volume information"}
LINK_REASONS = {"dangling_symlink": "dangling_symlink", "symlink_loop": "symlink_loop",
                "escaping_symlink": ESCAPE_REASON, "symlinked_dir": "symlinked_folder",
                "special": "not_a_regular_file", "unreadable_dir": "unreadable_folder",
                "unreadable_entry": "unreadable_file"}


def _class_of(folder: str, spec: DatasetSpec) -> str | None:
    """Canonical class name of a folder (in any view), or None when the name is unknown."""
    key = folder.strip().lower()
    return spec.class_map.get(folder) or spec.class_map.get(key) or CLASS_ALIASES.get(key)


def split_aliases(spec: DatasetSpec) -> dict[str, str]:
    """Lower-case folder name -> split: the common spellings plus the spec's `splits` folder names."""
    aliases = dict(SPLIT_ALIASES)
    for split, folder in spec.splits.items():
        if split not in SPLITS:
            raise ConfigError(choices_message(f"split in spec {spec.name!r} splits", split, SPLITS))
        aliases[str(folder).strip("/").lower()] = split
    return aliases


def _symlink_kind(link: Path, root: Path) -> str:
    try:
        target = link.resolve(strict=True)
    except FileNotFoundError:
        return "dangling_symlink"
    except (RuntimeError, OSError):
        return "symlink_loop"
    if not target.is_relative_to(root):
        return "escaping_symlink"
    if target.is_dir():
        return "symlinked_dir"
    return "file" if target.is_file() else "special"


def _kind(entry: Path, root: Path) -> str:
    """What one listed entry is: file, dir, special, a symlink kind, or unreadable (its stat failed)."""
    try:
        if entry.is_symlink():
            return _symlink_kind(entry, root)
        if entry.is_dir():
            return "dir"
        return "file" if entry.is_file() else "special"
    except OSError:       # e.g. a path longer than the system allows
        return "unreadable_entry"


def walk(directory: Path, root: Path) -> Iterator[tuple[Path, str]]:
    """Every entry below `directory`, sorted, as (path, kind); real folders are descended, links are not.

    Depth-first with an explicit stack (no recursion), so folders nested thousands deep are walked too; a
    folder that cannot be listed (no permission, a path longer than the system allows) is one entry.
    """
    stack: list[Iterator[Path]] = []
    folder: Path | None = directory
    while True:
        if folder is not None:
            try:
                stack.append(iter(sorted(folder.iterdir())))
            except OSError:
                yield folder, "unreadable_dir"
            folder = None
        if not stack:
            return
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        kind = _kind(entry, root)
        if kind == "dir":
            folder = entry
        else:
            yield entry, kind


def _is_system(part: str) -> bool:
    return part.startswith(".") or part.lower() in SYSTEM_NAMES


def _classify(parts: list[str], kind: str, spec: DatasetSpec, aliases: dict[str, str],
              scan: SourceScan) -> SourceRecord | None:
    """One file's verdict: a record, or None after recording it as quarantined or excluded."""
    relpath = "/".join(parts)
    if any(_is_system(part) for part in parts):
        scan.exclusions["hidden_or_system_file"] += 1
        return None
    if kind in LINK_REASONS:
        scan.quarantine_row(relpath, LINK_REASONS[kind], f"{kind.replace('_', ' ')}; not followed")
        return None
    if len(parts) == 1:
        scan.exclusions["file_outside_split_folders"] += 1
        return None
    split = aliases.get(parts[0].lower())
    if split is None:
        scan.quarantine_row(relpath, "unknown_split_folder",
                            f"folder {parts[0]!r} is not one of {', '.join(sorted(aliases))}")
        return None
    if len(parts) == 2:
        scan.quarantine_row(relpath, "no_class_folder", f"directly under split folder {parts[0]!r}")
        return None
    name = _class_of(parts[1], spec)
    if name is None:
        scan.quarantine_row(relpath, "label_outside_class_set",
                            f"class folder {parts[1]!r} is not one of {', '.join(spec.classes)} (or an alias)")
        return None
    if name not in spec.classes:
        scan.exclusions[f"{name}_outside_{spec.num_classes}_class_view"] += 1
        return None
    return SourceRecord(relpath=relpath, split=split, label=spec.classes.index(name), source_label=parts[1])


def scan_folder(root: Path, spec: DatasetSpec, work_dir: Path) -> SourceScan:
    """Walk the root (sorted, so the order is stable) and give every file a verdict."""
    aliases = split_aliases(spec)
    try:
        found = sorted(entry.name for entry in root.iterdir())
    except OSError as exc:
        raise ConfigError(f"cannot list the folder dataset root {root}: {exc}") from exc
    if not any(name.lower() in aliases and (root / name).is_dir() and not (root / name).is_symlink()
               for name in found):
        raise ConfigError(f"no split folders under {root} (found: {', '.join(found[:10]) or 'nothing'}); expected "
                          f"some of: {', '.join(sorted(aliases))} (symlinked split folders are not followed)")
    scan = SourceScan(image_root=root, inputs=0, params={"adapter": f"folder@{ADAPTER_VERSION}"})
    resolved = root.resolve()
    for path, kind in walk(root, resolved):
        scan.inputs += 1
        record = _classify(list(path.relative_to(root).parts), kind, spec, aliases, scan)
        if record is not None:
            scan.records.append(record)
    return scan
