"""Model code the stages load from local files: HRNetV2-W18, 2D-FAN, dlib's packaged models, OpenFace."""
from __future__ import annotations


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
