"""Where a run trains and how torch is set up for it: the device choice (said aloud, with its reason),
the check that a recipe meant for CUDA is not run on a CPU unawares, seeding and backend flags."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from pipeline.contract.errors import ConfigError, choices_message

log = logging.getLogger(__name__)

RECIPE_DEVICES = ("any", "cpu", "cuda")
CPU_RECIPE = "training/configs/quickstart.yaml"   # learns the default version on 2 cores


def select_device(name: str) -> tuple[torch.device, str]:
    """(device, reason): `auto` takes CUDA when present, else the CPU; an explicit name is checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda"), f"runtime.device=auto and CUDA is available ({torch.cuda.get_device_name(0)})"
        built = f"torch {torch.__version__} built with CUDA {torch.version.cuda}" if torch.version.cuda \
            else f"torch {torch.__version__} is a CPU build"
        return torch.device("cpu"), f"runtime.device=auto and CUDA is not available ({built})"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --set runtime.device=cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(choices_message("device (runtime.device)", name, ("auto", "cpu", "cuda", "cuda:N"))) from exc
    return device, f"runtime.device={name}"


def recipe_warning(method: str, recipe_device: str, device: torch.device, summary: str) -> str | None:
    """One line when a recipe written for CUDA is about to run on the CPU, pointing at the CPU recipe."""
    if recipe_device not in RECIPE_DEVICES:
        raise ConfigError(choices_message("recipe device (runtime.recipe_device)", recipe_device, RECIPE_DEVICES))
    if recipe_device != "cuda" or device.type != "cpu":
        return None
    where = "this machine has no CUDA" if not torch.cuda.is_available() else "runtime.device is the CPU"
    return (f"training/configs/{method}.yaml is a CUDA recipe ({summary}) and {where}: expect minutes per epoch; "
            f"for a CPU run add --config {CPU_RECIPE} (make train ... CONFIG={CPU_RECIPE})")


def choose_device(config) -> torch.device:
    """select_device for a TrainConfig, logging the choice and its reason, and the CUDA-recipe warning."""
    device, reason = select_device(config.runtime.device)
    log.info("device %s: %s", device, reason)
    summary = f"{config.model.backbone} at {config.data.image_size} px, {config.epochs} epochs"
    warning = recipe_warning(config.method, config.runtime.recipe_device, device, summary)
    if warning:
        log.warning(warning)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def configure_runtime(config, device: torch.device) -> None:
    """Threads, determinism and the cuDNN / TF32 flags of a run."""
    rt = config.runtime
    if rt.threads > 0:
        torch.set_num_threads(rt.threads)
    if rt.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
