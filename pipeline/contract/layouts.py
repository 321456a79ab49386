"""Landmark layouts and the ONE AFLW-19-from-iBUG-68 mapping (shared by the pipeline and the trainer).

One table, AFLW19_FROM_IBUG68, and its two forms side by side: `aflw19_from_ibug68` on numpy arrays (the
landmarks stage, alignment) and `aflw19_from_ibug68_torch` on tensors (LA-Net's heatmap branch); torch is
imported only by the torch form, so `import pipeline` stays light.

iBUG 300-W 68 points, 0-based (as dlib, FAN and HRNet-300W give them): 0-16 jaw (8 = chin), 17-21 and
22-26 the brows of the image-left and image-right eye (17 and 26 the outer ends, 19 and 24 the middles),
27-30 nose bridge (30 = tip), 31-35 nose base (31 and 35 the wings), 36-41 and 42-47 the eyes (36/39 and
42/45 the corners, 37, 38, 40, 41 and 43, 44, 46, 47 the lids), 48-59 outer lips (48 and 54 the corners,
51 and 57 the outer mid-points of the upper and lower lip), 60-67 inner lips (62 and 66 the inner
mid-points of the upper and lower lip, where the lips meet).

AFLW 19 points. AFLW (Koestinger, Wohlhart, Roth and Bischof, "Annotated Facial Landmarks in the Wild",
IEEE ICCV Workshops 2011) defines 21 points; their names in the database's FeatureCoordTypes table, in
order, with Left/Right as seen by the viewer: LeftBrowLeftCorner, LeftBrowCenter, LeftBrowRightCorner,
RightBrowLeftCorner, RightBrowCenter, RightBrowRightCorner, LeftEyeLeftCorner, LeftEyeCenter,
LeftEyeRightCorner, RightEyeLeftCorner, RightEyeCenter, RightEyeRightCorner, LeftEar, NoseLeft,
NoseCenter, NoseRight, RightEar, MouthLeftCorner, MouthCenter, MouthRightCorner, ChinCenter.
AFLW-19 (Zhu, Loy and Tang, "Unconstrained Face Alignment via Cascaded Compositional Learning", CVPR
2016; the layout of the HR18-AFLW checkpoint and of LA-Net's official code) is those 21 without the two
ears: brows 6, eyes 6 (corners and centres), nose 3, mouth 3 (corners and centre), chin 1.

Mapping choices: an eye centre is the mean of its four lid points; the mouth centre is the point where
the lips meet, the mean of the inner-lip mid-points 62 and 66 (the outer mid-points 51/57 sit on the lip
borders, and their mean drifts with lip thickness, below the lip line on a typical thicker lower lip);
the nose centre is the tip (30); the chin is 8.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.contract.errors import ConfigError, choices_message

if TYPE_CHECKING:
    import torch

IBUG68 = 68
AFLW19 = 19
LAYOUTS: dict[str, int] = {"native": 0, "ibug68": IBUG68, "aflw19": AFLW19}   # 0: keep the backend's

AFLW19_NAMES: tuple[str, ...] = (
    "LeftBrowLeftCorner", "LeftBrowCenter", "LeftBrowRightCorner",
    "RightBrowLeftCorner", "RightBrowCenter", "RightBrowRightCorner",
    "LeftEyeLeftCorner", "LeftEyeCenter", "LeftEyeRightCorner",
    "RightEyeLeftCorner", "RightEyeCenter", "RightEyeRightCorner",
    "NoseLeft", "NoseCenter", "NoseRight",
    "MouthLeftCorner", "MouthCenter", "MouthRightCorner",
    "ChinCenter",
)

# AFLW-19 point k is the mean of the iBUG-68 points (0-based) in group k.
AFLW19_FROM_IBUG68: tuple[tuple[int, ...], ...] = (
    (17,), (19,), (21,), (22,), (24,), (26,),                          # brows: left outer..inner, right inner..outer
    (36,), (37, 38, 40, 41), (39,), (42,), (43, 44, 46, 47), (45,),    # eyes: corner, centre, corner (x2)
    (31,), (30,), (35,),                                               # nose: left wing, tip, right wing
    (48,), (62, 66), (54,),                                            # mouth: corner, centre, corner
    (8,),                                                              # chin
)

# The five alignment points (eye centres, nose tip, mouth corners) as AFLW-19 indices.
AFLW19_FIVE: tuple[int, ...] = (7, 10, 13, 15, 17)


def layout_points(name: str) -> int:
    """Number of points of an output layout name ('native' -> 0, meaning keep the backend's)."""
    if name not in LAYOUTS:
        raise ConfigError(choices_message("landmark layout", name, LAYOUTS))
    return LAYOUTS[name]


def aflw19_from_ibug68(points: np.ndarray) -> np.ndarray:
    """[..., 68, 2] iBUG points -> [..., 19, 2] AFLW-19 points (float32), by AFLW19_FROM_IBUG68."""
    p = np.asarray(points, dtype=np.float32)
    if p.shape[-2:] != (IBUG68, 2):
        raise ConfigError(f"expected [..., 68, 2] landmarks to convert to AFLW-19, got {p.shape}")
    return np.stack([p[..., list(group), :].mean(axis=-2) for group in AFLW19_FROM_IBUG68], axis=-2)


def aflw19_from_ibug68_torch(points: torch.Tensor) -> torch.Tensor:
    """[..., 68, 2] iBUG points (a tensor, any device) -> [..., 19, 2] AFLW-19 points, by AFLW19_FROM_IBUG68."""
    import torch

    if points.shape[-2:] != (IBUG68, 2):
        raise ConfigError(f"expected [..., 68, 2] landmarks to convert to AFLW-19, got {tuple(points.shape)}")
    return torch.stack([points[..., list(group), :].mean(dim=-2) for group in AFLW19_FROM_IBUG68], dim=-2)
