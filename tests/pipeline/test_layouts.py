"""The one AFLW-19-from-68 mapping (pipeline.contract.layouts), checked against AFLW's point definitions."""
import numpy as np
import pytest
import torch

from pipeline import geometry
from pipeline.contract import layouts
from pipeline.contract.errors import ConfigError

# iBUG-68 under a horizontal flip (0-based): jaw, brows, nose base, eyes and lips swap sides.
IBUG68_MIRROR = ([16 - i for i in range(17)] + [26 - i for i in range(10)] + [27, 28, 29, 30]
                 + [35, 34, 33, 32, 31] + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
                 + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])
# AFLW-19 under the same flip: Left* <-> Right*, the centres stay.
AFLW19_MIRROR = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 14, 13, 12, 17, 16, 15, 18]


def _face68():
    """A frontal 68-point face, image coordinates, closed mouth (inner lips meet on the corner line)."""
    p = np.zeros((68, 2))
    p[:17] = np.stack([50 + 100 * np.sin(np.linspace(-1.4, 1.4, 17)), 120 + 60 * np.cos(np.linspace(-1.4, 1.4, 17))], 1)
    p[17:22] = np.stack([np.linspace(10, 45, 5), [60, 54, 52, 54, 58]], 1)      # image-left brow, outer -> inner
    p[22:27] = np.stack([np.linspace(55, 90, 5), [58, 54, 52, 54, 60]], 1)
    p[27:31] = np.stack([[50] * 4, np.linspace(70, 100, 4)], 1)                  # bridge, tip last
    p[31:36] = np.stack([np.linspace(40, 60, 5), [105, 107, 108, 107, 105]], 1)
    for start, cx in ((36, 30.0), (42, 70.0)):                                  # eyes: corner, lids, corner
        p[start:start + 6] = [[cx - 8, 70], [cx - 3, 67], [cx + 3, 67], [cx + 8, 70], [cx + 3, 73], [cx - 3, 73]]
    p[48:60] = [[35, 130], [40, 126], [45, 124], [50, 125], [55, 124], [60, 126], [65, 130],
                [60, 137], [55, 140], [50, 141], [45, 140], [40, 137]]          # outer lips: thin top, thick bottom
    p[60:68] = [[37, 130], [44, 130], [50, 130], [56, 130], [63, 130], [56, 130], [50, 130], [44, 130]]
    return p


def test_the_mapping_follows_aflws_definitions():
    p = _face68()
    q = layouts.aflw19_from_ibug68(p)
    assert q.shape == (19, 2) and len(layouts.AFLW19_NAMES) == 19
    named = dict(zip(layouts.AFLW19_NAMES, q))
    np.testing.assert_allclose(named["LeftEyeCenter"], p[[37, 38, 40, 41]].mean(0))
    assert named["LeftEyeLeftCorner"][0] < named["LeftEyeCenter"][0] < named["LeftEyeRightCorner"][0]
    assert named["LeftBrowLeftCorner"][0] < named["LeftBrowCenter"][0] < named["LeftBrowRightCorner"][0]
    np.testing.assert_allclose(named["NoseCenter"], p[30])
    np.testing.assert_allclose(named["ChinCenter"], p[8])
    # mouth centre: where the lips meet, on the line of the corners, not midway between the outer lip borders
    corners_y = 0.5 * (named["MouthLeftCorner"][1] + named["MouthRightCorner"][1])
    assert named["MouthCenter"][1] == pytest.approx(corners_y)
    assert p[[51, 57], 1].mean() > corners_y + 2                               # what the old trainer copy used


def test_left_and_right_swap_together_under_a_flip():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 100, (68, 2))
    flipped = p[IBUG68_MIRROR] * [-1, 1]
    expected = layouts.aflw19_from_ibug68(p)[AFLW19_MIRROR] * [-1, 1]
    np.testing.assert_allclose(layouts.aflw19_from_ibug68(flipped), expected, atol=1e-4)


def test_pipeline_and_trainer_use_the_one_mapping():
    from training.methods.lanet import landmarks as lanet_landmarks
    from training.methods.lanet import parts as lanet_parts

    assert not hasattr(lanet_landmarks, "aflw19_from_ibug68") and not hasattr(geometry, "landmarks_68_to_aflw19")
    assert lanet_parts.aflw19_from_ibug68_torch is layouts.aflw19_from_ibug68_torch   # the trainer's form
    p = np.random.default_rng(1).uniform(0, 256, (3, 68, 2)).astype(np.float32)
    from_trainer = layouts.aflw19_from_ibug68_torch(torch.from_numpy(p)).numpy()      # [3, 19, 2]
    np.testing.assert_allclose(layouts.aflw19_from_ibug68(p), from_trainer, atol=1e-4)
    with pytest.raises(ConfigError, match="68, 2"):
        layouts.aflw19_from_ibug68_torch(torch.zeros(2, 19, 2))
    face = _face68()               # alignment points agree whichever layout they come from
    np.testing.assert_allclose(geometry.five_points(layouts.aflw19_from_ibug68(face)), geometry.five_points(face),
                               atol=1e-4)
    with pytest.raises(ConfigError, match="68, 2"):
        layouts.aflw19_from_ibug68(np.zeros((19, 2)))
    with pytest.raises(ConfigError, match="valid choices"):
        layouts.layout_points("wflw98")
