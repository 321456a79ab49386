"""Pseudo valence-arousal: a trained VA regressor applied to a version's aligned crops -> samples.parquet.

LDLVA finds neighbours in valence-arousal space; RAF-DB and FERPlus have no valence-arousal, and the LDLVA
paper gets it for them from an existing VA regressor. This stage applies such a regressor (a TorchScript
file exported by the trainer's `va_regression` method, training/methods/va_regression.py) to every valid
crop and writes `valence`, `arousal` and `va_source` ("pseudo") into samples.parquet, with the table
metadata `va: pseudo` and the checkpoint's hash and provenance, so the graphs stage then builds the `va`
graph from them. Rows without a usable crop get nulls (the graph leaves them out).

The file is self-contained: its extra metadata (`fer_va.json`) says how to feed it (resize the uint8 crop
to `source_size`, centre-crop `image_size`, scale to [0, 1], normalise with `mean` / `std`: the trainer's
evaluation path), so this module never imports the trainer. The checkpoint's content hash (not its path)
is part of the stage fingerprint (`fingerprint_params`). By default a source that has its own
valence-arousal (AffectNet, the synthetic set) keeps it; `replace: true` overwrites it with pseudo values,
which is how the pseudo-VA is measured against withheld ground truth (bench/pseudo_va.py).

Determinism: inference runs on the CPU with `threads` torch threads (default 1) and the outputs are
rounded to ROUND_DECIMALS, so the same checkpoint and crops give byte-identical tables.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.contract import tables as artifacts
from pipeline.contract.crops import open_crops, read_valid_mask
from pipeline.contract.errors import ArtifactError, BackendMissingError, ConfigError
from pipeline.contract.ranges import bounded
from pipeline.contract.va_regressor import FORMAT, FORMAT_VERSIONS, INPUT_KEYS, META_FILE
from pipeline.stages.base import Stage, register_stage

log = logging.getLogger(__name__)

STAGE_VERSION = "1.0.0"
ROUND_DECIMALS = 5
VA_SOURCE_PSEUDO = "pseudo"


@dataclass(frozen=True)
class PseudoVAConfig:
    """`pseudo_va` section of the prepare config; the stage runs only when `checkpoint` is set."""

    checkpoint: str | None = None    # TorchScript VA regressor (training.methods.va_regression.export_run)
    replace: bool = False            # also overwrite a source's own valence-arousal (to measure against it)
    batch_size: int = bounded(128, 1, 65_536)           # crops per forward pass (does not change the values)
    threads: int = bounded(1, 1, 4096)   # torch CPU threads while predicting (1: the same bytes on every machine)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.threads < 1:
            raise ConfigError(f"pseudo_va.batch_size ({self.batch_size}) and pseudo_va.threads ({self.threads}) "
                              f"must be >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.checkpoint)


def _torch():
    try:
        import torch
    except ImportError as exc:  # torch is a core dependency; say so when an environment lacks it
        raise BackendMissingError("the pseudo_va stage needs torch: `pip install -e .` (or `make install`)") from exc
    return torch


def load_regressor(path: str | Path):
    """(TorchScript module in eval mode, metadata dict) of an exported VA regressor; ConfigError when unusable."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise BackendMissingError(f"pseudo_va.checkpoint {str(path)!r} is not a file: give the TorchScript VA "
                                  f"regressor exported from a va_regression run (bench/pseudo_va.py shows how)")
    extra = {META_FILE: ""}
    try:
        with warnings.catch_warnings():   # torch 2.13 marks TorchScript deprecated; it still loads and runs
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ConfigError(f"pseudo_va.checkpoint {str(path)!r} is not a readable TorchScript file: {exc}") from exc
    try:
        meta = json.loads(extra[META_FILE] or "null")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"pseudo_va.checkpoint {str(path)!r}: its {META_FILE} metadata is not JSON") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") not in FORMAT_VERSIONS:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ConfigError(f"pseudo_va.checkpoint {str(path)!r} carries no {FORMAT!r} metadata "
                          f"(format {got!r}; versions {FORMAT_VERSIONS}); export it with "
                          f"training.methods.va_regression.export_run")
    for key in INPUT_KEYS:
        if key not in meta.get("input", {}):
            raise ConfigError(f"pseudo_va.checkpoint {str(path)!r}: metadata input lacks {key!r}")
    return module.eval(), meta


def check_backend(config: PseudoVAConfig) -> None:
    """Fail before any per-image work: the checkpoint loads, has its metadata and maps one crop to [1, 2]."""
    if not config.enabled:
        return
    torch = _torch()
    module, meta = load_regressor(config.checkpoint)
    size = int(meta["input"]["image_size"])
    with torch.no_grad():
        out = module(torch.zeros(1, 3, size, size))
    if tuple(out.shape) != (1, 2):
        raise ConfigError(f"pseudo_va.checkpoint {config.checkpoint!r} maps a [1, 3, {size}, {size}] image to "
                          f"{tuple(out.shape)}, not [1, 2] (valence, arousal)")


def checkpoint_hash(config: PseudoVAConfig) -> str:
    """Content hash of the checkpoint file (stat-cached, like source files)."""
    from pipeline.store.hashing import default_hash_cache

    cache = default_hash_cache()
    try:
        return cache.hash(config.checkpoint)
    finally:
        cache.close()


def fingerprint_params(config: PseudoVAConfig) -> dict:
    """What the stage fingerprint holds: the checkpoint's content hash and the options that change values."""
    return {"checkpoint_hash": checkpoint_hash(config), "replace": config.replace, "round": ROUND_DECIMALS}


def preprocess(crops, meta: dict):
    """uint8 [B, S, S, 3] crops -> float32 [B, 3, h, w] as the regressor was fed (see the module docstring)."""
    torch = _torch()
    spec = meta["input"]
    source, size = int(spec["source_size"]), int(spec["image_size"])
    x = torch.from_numpy(np.array(crops, np.uint8)).permute(0, 3, 1, 2).float()       # [B, 3, S, S] (a copy)
    if x.shape[-1] != source:
        x = torch.nn.functional.interpolate(x, size=(source, source), mode="bilinear", antialias=True,
                                            align_corners=False).round_().clamp_(0, 255)  # [B, 3, R, R]
    top = (source - size) // 2
    x = x[:, :, top:top + size, top:top + size] / 255.0                                # [B, 3, h, w]
    mean = torch.tensor(spec["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def predict_va(crops: np.ndarray, rows: np.ndarray, module, meta: dict, batch_size: int = 128,
               threads: int = 1) -> np.ndarray:
    """[len(rows), 2] float32 valence, arousal of crops[rows], rounded to ROUND_DECIMALS."""
    torch = _torch()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = np.empty((len(rows), 2), np.float32)
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                out[start:start + len(chunk)] = module(preprocess(crops[chunk], meta)).float().numpy()  # [b, 2]
    finally:
        torch.set_num_threads(previous)
    return np.round(out, ROUND_DECIMALS).astype(np.float32)


def _with_va(samples: pa.Table, va: np.ndarray, has: np.ndarray) -> pa.Table:
    """samples with valence / arousal (null where `has` is False) and va_source replaced or appended."""
    columns = {"valence": pa.array(va[:, 0], pa.float32(), mask=~has),
               "arousal": pa.array(va[:, 1], pa.float32(), mask=~has),
               "va_source": pa.array(np.where(has, VA_SOURCE_PSEUDO, None), pa.string())}
    for name, column in columns.items():
        if name in samples.column_names:
            samples = samples.set_column(samples.column_names.index(name), name, column)
        else:
            samples = samples.append_column(name, column)
    return samples


def apply_pseudo_va(version_dir: str | Path, config: PseudoVAConfig, digest: str) -> dict:
    """Write pseudo valence-arousal into `version_dir`/samples.parquet; returns what it did.

    Runs after the faces stage (it reads the crop store). A source with its own valence-arousal is left
    as it is unless `config.replace`. `digest` is the checkpoint's content hash (checkpoint_hash).
    """
    version_dir = Path(version_dir)
    path = version_dir / artifacts.SAMPLES
    samples = artifacts.read_table(path)
    if "valence" in samples.column_names and not config.replace:
        log.info("pseudo_va: %s has its own valence-arousal; kept (set pseudo_va.replace=true to overwrite)", path)
        return {"written": 0, "kept_source_va": True}
    crops = open_crops(version_dir / artifacts.CROPS_DIR)
    ids = samples.column("sample_id").to_numpy()
    if crops.shape[0] != len(ids) or ids.max(initial=-1) >= crops.shape[0]:
        raise ArtifactError(f"pseudo_va: crop store has {crops.shape[0]} rows but {path} has {len(ids)} samples")
    has = read_valid_mask(version_dir / artifacts.CROPS_DIR).astype(bool)[ids]          # [N] in table order
    module, meta = load_regressor(config.checkpoint)
    va = np.zeros((len(ids), 2), np.float32)
    va[has] = predict_va(crops, ids[has], module, meta, config.batch_size, config.threads)
    metadata = {**artifacts.table_metadata(samples), "va": VA_SOURCE_PSEUDO,
                "va_checkpoint": {"hash": digest, "trained_on": meta.get("trained_on"),
                                  "test_metrics": meta.get("test_metrics"), "stage_version": STAGE_VERSION}}
    table = _with_va(samples, va, has).replace_schema_metadata(
        {k: v for k, v in (samples.schema.metadata or {}).items() if not k.startswith(b"fer.")})
    artifacts.write_table(path, table, metadata)
    log.info("pseudo_va: %d of %d samples got pseudo valence-arousal (%s)", int(has.sum()), len(ids), digest[:12])
    return {"written": int(has.sum()), "kept_source_va": False, "checkpoint_hash": digest}


# --- the registered stage ----------------------------------------------------------------------------------

def is_enabled(config: PseudoVAConfig) -> bool:
    return config.enabled


def write_pseudo_va(version_dir: Path, config: PseudoVAConfig) -> dict:
    return apply_pseudo_va(version_dir, config, checkpoint_hash(config))


def pseudo_va_calls(version_dir: Path, config: PseudoVAConfig, spec=None) -> dict:
    return {"pseudo_va": partial(write_pseudo_va, version_dir, config)}


def summarise(results: dict) -> tuple[dict, dict]:
    return results["pseudo_va"], {}


# after the faces (it reads the crops), before the graphs (it writes the va space)
PREPARE_STAGE = register_stage(Stage(
    name="pseudo_va", version=STAGE_VERSION, config=PseudoVAConfig, writes=(artifacts.SAMPLES,), after=("faces",),
    check=check_backend, params=fingerprint_params, enabled=is_enabled, calls=pseudo_va_calls, summarise=summarise))
