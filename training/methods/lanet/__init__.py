"""LA-Net (ICCV 2023): landmark-aware label distribution estimation and expression-landmark contrast.

`method` holds the registered method; `lde`, `el`, `landmarks`, `parts` and `diagnostics` its parts.
"""
from training.methods.lanet.method import LANet

__all__ = ["LANet"]
