"""The aligned-crop store: one uint8 memory-mapped array [N, S, S, 3] plus a small JSON index.

Row i holds the crop of sample_id i, so the trainer slices it without decoding anything. Rows whose
face could not be aligned stay zero and are marked invalid in `valid.npy`. The format name and shape
are recorded in `index.json` (and in the version manifest).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.contract.atomic import atomic_path
from pipeline.contract.errors import ArtifactError
from pipeline.contract.storage import allocate

FORMAT = "memmap-u8-v1"
DATA_FILE = "crops.u8"
INDEX_FILE = "index.json"
VALID_FILE = "valid.npy"


def create_crop_store(directory: str | Path, num_samples: int, size: int) -> np.memmap:
    """Create (or reopen for writing, when the shape and size match) a zero-filled store; returns the writable array.

    The data file's blocks are allocated before it is mapped (posix_fallocate), so a full disk fails here
    with one StorageError naming the file and the space needed, never later with SIGBUS on a write
    through the map.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index = {"format": FORMAT, "num_samples": int(num_samples), "size": int(size), "channels": 3, "dtype": "uint8"}
    index_path = directory / INDEX_FILE
    shape = (num_samples, size, size, 3)
    nbytes = int(np.prod(shape))
    data_path = directory / DATA_FILE
    if index_path.is_file() and json.loads(index_path.read_text()) == index and data_path.is_file() \
            and data_path.stat().st_size == nbytes:
        allocate(data_path, nbytes, "r+b")          # a store left sparse by an older writer gets its blocks
        return np.memmap(data_path, dtype=np.uint8, mode="r+", shape=shape)
    index_path.unlink(missing_ok=True)              # the index is written last: without it, no store
    data_path.unlink(missing_ok=True)               # a reader's map keeps the old file, never a truncated one
    allocate(data_path, nbytes, "wb")
    with atomic_path(index_path) as tmp:            # the index is renamed into place after the array is mapped
        tmp.write_text(json.dumps(index, indent=2))
        array = np.memmap(data_path, dtype=np.uint8, mode="r+", shape=shape)
    return array


def write_valid_mask(directory: str | Path, valid: np.ndarray) -> None:
    """Save which rows hold a real crop ([N] bool)."""
    path = Path(directory) / VALID_FILE
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(valid, dtype=bool))


DAMAGED = "the version is damaged: `make verify` lists what else, `make prepare` rebuilds it"


def open_crops(directory: str | Path) -> np.ndarray:
    """Read-only [N, S, S, 3] uint8 view of a crop store; a store whose data file is missing or not the size
    its index says is one ArtifactError (never a ValueError from the map, nor SIGBUS on a later read)."""
    directory = Path(directory)
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        raise ArtifactError(f"no crop store at {directory} (missing {INDEX_FILE}); run the align stage first")
    try:
        index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT:
            raise ArtifactError(f"crop store {directory} has format {index.get('format')!r}; this code reads "
                                f"{FORMAT!r}")
        shape = (int(index["num_samples"]), int(index["size"]), int(index["size"]), int(index["channels"]))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ArtifactError(f"crop store index {index_path} is unreadable ({type(exc).__name__}: {exc}); "
                            f"{DAMAGED}") from None
    data_path = directory / DATA_FILE
    expected = int(np.prod(shape))
    size = data_path.stat().st_size if data_path.is_file() else None
    if size != expected:
        found = "missing" if size is None else f"{size} bytes"
        raise ArtifactError(f"crop store {data_path} is {found}, its index says {expected} bytes "
                            f"({shape[0]} crops of {shape[1]}x{shape[2]}); {DAMAGED}")
    return np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)


def read_valid_mask(directory: str | Path) -> np.ndarray:
    """[N] bool: rows holding a real crop. A missing, unreadable or mis-sized mask is one ArtifactError:
    without it every zero-filled crop would count as a face."""
    directory = Path(directory)
    path = directory / VALID_FILE
    rows = open_crops(directory).shape[0]
    if not path.is_file():
        raise ArtifactError(f"crop store {directory} has no {VALID_FILE}; {DAMAGED}")
    try:
        valid = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ArtifactError(f"{path} is unreadable ({type(exc).__name__}: {exc}); {DAMAGED}") from None
    if valid.dtype != np.bool_ or valid.shape != (rows,):
        raise ArtifactError(f"{path} holds {valid.dtype} {list(valid.shape)}, not [{rows}] bool (one flag per crop); "
                            f"{DAMAGED}")
    return valid
