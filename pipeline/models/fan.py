"""face-alignment's 2D-FAN landmark network, loaded from a local TorchScript checkpoint and checked.

face-alignment ships 2DFAN4 as a .zip holding one TorchScript .pth archive (or the .pth itself); the .zip is
unpacked next to it once. `load_fan` fails with ConfigError naming the config key and the file when the
file cannot be loaded, or when one zero input does not give 2D-FAN's 68 heatmaps of 64 x 64 (a wrong
architecture), so a bad checkpoint stops the run before any crop.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from pipeline.contract.errors import ConfigError

FAN_INPUT = 256


def _is_torchscript_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("data.pkl") for name in archive.namelist())


def load_fan(checkpoint: str, device: str, key: str = "LandmarkConfig.fan_checkpoint"):
    """TorchScript 2D-FAN from a local file (face-alignment's .zip holds one .pth TorchScript archive)."""
    import torch

    path = Path(checkpoint)
    try:
        if zipfile.is_zipfile(path) and not _is_torchscript_zip(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise ConfigError(f"{key} {checkpoint!r} should hold one TorchScript file, has {names}")
                target = path.with_suffix("")
                target.mkdir(exist_ok=True)
                archive.extract(names[0], target)
                path = target / names[0]
        model = torch.jit.load(str(path), map_location=device).eval()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{key} {checkpoint!r} cannot be loaded as a TorchScript 2D-FAN: "
                          f"{type(exc).__name__}: {exc}") from exc
    probe_fan(model, checkpoint, device, key)
    return model


def probe_fan(model, checkpoint: str, device: str, key: str) -> None:
    """One zero input through the network: a 2D-FAN gives 68 heatmaps of 64 x 64."""
    import torch

    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, FAN_INPUT, FAN_INPUT, device=device))       # [1, 68, 64, 64]
    except Exception as exc:
        raise ConfigError(f"{key} {checkpoint!r} fails on a 1x3x256x256 input, so it is no 2D-FAN: "
                          f"{type(exc).__name__}: {exc}") from exc
    out = out[-1] if isinstance(out, (list, tuple)) else out
    if tuple(out.shape) != (1, 68, FAN_INPUT // 4, FAN_INPUT // 4):
        raise ConfigError(f"{key} {checkpoint!r} gives output {tuple(out.shape)}, not 2D-FAN's "
                          f"(1, 68, 64, 64) heatmaps")
