"""Checkpoints: everything needed to continue a run exactly, loadable with weights_only=True.

A checkpoint holds the method's state dict (networks and buffers, i.e. per-sample state), optimiser,
scheduler, sampler state {epoch, position, seed}, step counters, the evaluation history, the RNG states
(python, numpy, torch CPU and CUDA), the resolved config and the dataset version id. RNG states are stored
as tensors and plain values, so no pickled objects are needed to read one back.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pipeline.contract.atomic import atomic_path
from pipeline.contract.errors import ConfigError

CHECKPOINT_VERSION = 1
LAST = "last.pt"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]) + [random.getstate()[0]],
             "python_gauss": random.getstate()[2],
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[-1], tuple(int(v) for v in py[:-1]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, method, optimizer, scheduler, sampler_state: dict, step: int,
                    epoch: int, position: int, history: list, config: dict, dataset_version: str) -> Path:
    """Write atomically (temp file + rename) so a kill never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "checkpoint_version": CHECKPOINT_VERSION, "method": method.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "sampler": sampler_state,
        "step": int(step), "epoch": int(epoch), "position": int(position), "history": history,
        "rng": rng_state(), "config": config, "dataset_version": dataset_version,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def resolve_checkpoint(path_or_run: str | Path) -> Path:
    """A checkpoint file, or a run directory (its checkpoints/last.pt); ConfigError when absent."""
    path = Path(path_or_run)
    if path.is_dir():
        path = path / "checkpoints" / LAST
    if not path.is_file():
        near = sorted(str(p) for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
        raise ConfigError(f"checkpoint not found: {path}; give a checkpoint file or a run directory "
                          f"(runs/<run-id>/ holds checkpoints/{LAST})" + (f"; found: {', '.join(near)}" if near else ""))
    return path


REQUIRED_KEYS = ("checkpoint_version", "method", "optimizer", "scheduler", "sampler", "step", "epoch", "position",
                 "history", "rng", "config", "dataset_version")


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint this trainer wrote; ConfigError in one line for anything else (a plain state dict, a
    file of another program, a newer checkpoint format)."""
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:   # noqa: BLE001 - torch raises many types for a foreign or damaged file
        raise ConfigError(f"cannot read checkpoint {path}: it is not a file torch.save wrote with plain tensors "
                          f"and values ({type(exc).__name__}); resume from a run folder (runs/<run-id>/) or its "
                          f"checkpoints/{LAST}") from exc
    if not isinstance(payload, dict) or "checkpoint_version" not in payload:
        held = (f"a plain state dict of {len(payload)} entries" if isinstance(payload, dict)
                else f"a {type(payload).__name__}")
        raise ConfigError(f"{path} is not a checkpoint of this trainer (it holds {held}); resume from a run "
                          f"folder (runs/<run-id>/) or its checkpoints/{LAST}; initial backbone weights go in "
                          f"model.weights")
    if payload["checkpoint_version"] != CHECKPOINT_VERSION:
        raise ConfigError(f"checkpoint {path} has format {payload['checkpoint_version']!r}; this trainer reads "
                          f"format {CHECKPOINT_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing or not isinstance(payload["config"], dict):
        raise ConfigError(f"checkpoint {path} lacks {missing or ['a config']}: it was not written by this trainer "
                          f"or is damaged")
    return payload
