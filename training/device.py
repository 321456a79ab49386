"""Where a run trains and how torch is set up for it: the device choice (said aloud, with its reason),
the check that a recipe meant for CUDA is not run on a CPU unawares, the estimate of a training step's
memory (refused in one line on a CPU when it will not fit, never left to the kernel's OOM killer),
seeding and backend flags."""
from __future__ import annotations

import copy
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

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


# --- will a training step fit in memory? (CPU runs: a kernel OOM kill leaves no message at all) ---

GB = 1e9
HEADROOM = 0.9      # refuse when the estimate exceeds this share of the memory available


def available_memory() -> tuple[int, str]:
    """(bytes this process may still allocate, where the number comes from): MemAvailable, capped by a
    cgroup limit (a container's memory.max) when there is one."""
    found: list[tuple[int, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        found.append((pages * size, "free pages"))
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            cap, used = Path(limit).read_text().strip(), int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 1 << 60:
            found.append((int(cap) - used, "the cgroup memory limit"))
    return min(found) if found else (1 << 62, "unknown")


def _meta_probe(method: nn.Module, image_size: int) -> tuple[float, float]:
    """(bytes saved for backward per image, trainable / probed parameter ratio) of `method.predict`,
    run on a copy on the meta device (shapes only: no compute, no memory, no RNG or state touched)."""
    # scalar buffers (a branch index, a step counter) stay on the CPU: methods read them with int()
    probe = copy.deepcopy(method)._apply(lambda t: t.to("meta") if t.numel() > 1 else t).train()
    saved, ran = [0], set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(mod)) for m in probe.modules()]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            probe.predict(torch.zeros(2, 3, image_size, image_size, device="meta"))  # [2, C]
    finally:
        for hook in hooks:
            hook.remove()
    probed = sum(p.numel() for m in ran for p in m.parameters(recurse=False))
    trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    return saved[0] / 2, max(1.0, trainable / max(probed, 1))


def step_memory(method: nn.Module, images: int, image_size: int, optimizer: str) -> dict:
    """Estimated bytes of one training step: weights, gradients and optimiser state, plus the activations
    kept for backward (those of the prediction path per image, scaled by trainable / probed parameters
    for methods training more than one network) times the images of a step, plus the input batch."""
    per_image, scale = _meta_probe(method, image_size)
    params = sum(p.numel() * p.element_size() for p in method.parameters())
    buffers = sum(b.numel() * b.element_size() for b in method.buffers())
    slots = {"adam": 2, "adamw": 2, "sgd": 1}.get(optimizer, 2)
    weights = params * (2 + slots) + buffers
    activations = per_image * scale * images + images * 3 * image_size ** 2 * 4
    return {"total": weights + activations, "weights": weights, "activations": activations,
            "per_image": per_image * scale}


def check_step_memory(config, method: nn.Module, images: int, device: torch.device) -> None:
    """On the CPU: refuse, in one line, a step that will not fit the memory available (instead of a kernel
    kill minutes later), pointing at the CPU recipe when the recipe was written for CUDA."""
    if device.type != "cpu":
        return
    images *= 2 if "two_views" in getattr(method, "needs", ()) else 1      # a second augmented view each
    try:
        need = step_memory(method, images, config.data.image_size, config.optim.name)
    except Exception as exc:   # noqa: BLE001 - a method whose predict cannot run on the meta device
        log.warning("the memory of a training step of %s could not be estimated (%s: %s); if the run is killed, "
                    "lower batch_size or data.image_size", config.method, type(exc).__name__, exc)
        return
    have, source = available_memory()
    log.info("a training step needs about %.2f GB (%d images at %d px: %.2f GB of activations; weights, "
             "gradients and optimiser state %.2f GB); %.1f GB available (%s)", need["total"] / GB, images,
             config.data.image_size, need["activations"] / GB, need["weights"] / GB, have / GB, source)
    if need["total"] <= HEADROOM * have:
        return
    what = (f"a training step of {config.method} needs about {need['total'] / GB:.1f} GB ({images} images of "
            f"{config.data.image_size} px through {config.model.backbone}, {need['per_image'] / 1e6:.0f} MB each) "
            f"and this machine has {have / GB:.1f} GB available ({source})")
    if config.runtime.recipe_device == "cuda":
        raise ConfigError(f"{what}: training/configs/{config.method}.yaml is a CUDA recipe; for the CPU recipe add "
                          f"--config {CPU_RECIPE} (make train ... CONFIG={CPU_RECIPE})")
    raise ConfigError(f"{what}: lower batch_size (data.groups_per_batch for grouped batches) or data.image_size, "
                      f"or start from --config {CPU_RECIPE}")
