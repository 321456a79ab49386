"""Landmark backends: dlib against the synthetic set's true points, provided points, HRNet/FAN plumbing."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import geometry
from pipeline.contract.errors import BackendMissingError, ConfigError
from pipeline.contract.tables import vectors_to_arrow
from pipeline.stages.faces import AlignConfig, detect_dlib
from pipeline.stages.landmarks import (
    LandmarkConfig,
    fan_input_transform,
    hrnet_input_transform,
    landmarks_schema,
    landmarks_shard,
    points_from_table,
)

synthetic = pytest.importorskip("pipeline.synthetic.generator")


@pytest.fixture(scope="module")
def synthetic_crops():
    """12 synthetic faces (all classes, rotations up to 20 deg) detected and aligned by dlib, with true points."""
    config = synthetic.SyntheticConfig(n=12, seed=3, num_classes=7)
    crops, truth, transforms, images = [], [], [], []
    for i in range(config.n):
        sample = synthetic.generate_sample(config, i)
        face = detect_dlib(sample.image, AlignConfig())
        assert face.status == "ok", f"synthetic sample {i}: {face.status} {face.detail}"
        crops.append(geometry.warp_crop(sample.image, face.transform, 256))
        truth.append(geometry.map_points(sample.landmarks, face.transform))
        transforms.append(face.transform)
        images.append(sample)
    return np.stack(crops), np.stack(truth), np.stack(transforms), images


def _nme(pred, truth):
    """Mean point error over the outer-eye-corner distance (300-W convention), per face."""
    iod = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=1)
    return np.linalg.norm(pred - truth, axis=2).mean(axis=1) / iod


def test_dlib_landmarks_agree_with_the_synthetic_true_points(synthetic_crops):
    crops, truth, _, _ = synthetic_crops
    table, quarantine = landmarks_shard(crops, np.arange(len(crops)), LandmarkConfig(), progress=False)
    assert table.schema.equals(landmarks_schema(68), check_metadata=False) and quarantine == []
    assert table.column("n_points").to_pylist() == [68] * len(crops)
    pred = points_from_table(table)
    nme = _nme(pred, truth)
    assert nme.mean() <= 0.04, f"mean NME {nme.mean():.4f}"
    score = table.column("score").to_numpy()
    assert np.all((score > 0) & (score <= 1))


def test_provided_points_map_through_the_recorded_transform(synthetic_crops):
    _, truth, transforms, samples = synthetic_crops
    n = 4
    given = np.stack([s.landmarks.reshape(-1) for s in samples[:n]])
    valid = np.array([True, True, False, True])
    samples_table = pa.table({"sample_id": pa.array(np.arange(n), pa.int64()),
                              "given_landmarks": vectors_to_arrow(given, valid=valid)})
    rows = np.stack([geometry.transform_to_row(t) for t in transforms[:n]])
    faces = pa.table({"sample_id": pa.array(np.arange(n), pa.int64()),
                      "transform": vectors_to_arrow(rows, valid=np.array([True, True, True, False]))})
    table, quarantine = landmarks_shard(np.zeros((n, 256, 256, 3), np.uint8), np.arange(n),
                                        LandmarkConfig(backend="provided"), samples=samples_table, faces=faces)
    assert table.column("sample_id").to_pylist() == [0, 1]
    np.testing.assert_allclose(points_from_table(table), truth[:2], atol=1e-3)
    assert {(q.sample_id, q.reason) for q in quarantine} == {(2, "no_given_landmarks"), (3, "no_transform")}
    with pytest.raises(ConfigError, match="provides no landmarks"):
        landmarks_shard(np.zeros((1, 8, 8, 3), np.uint8), [0], LandmarkConfig(backend="provided"))


def test_aflw19_layout_end_to_end(synthetic_crops):
    crops, truth, _, _ = synthetic_crops
    table, _ = landmarks_shard(crops[:3], np.arange(3), LandmarkConfig(output_layout="aflw19"), progress=False)
    assert table.column("n_points").to_pylist() == [19] * 3
    points = points_from_table(table)
    np.testing.assert_allclose(geometry.five_points(points[0])[0], truth[0, 36:42].mean(0), atol=6.0)


def test_hrnet_backend_with_a_random_weight_checkpoint(tmp_path):
    from pipeline.models.hrnet import HRNetW18

    torch.manual_seed(0)
    torch.save(HRNetW18(19).state_dict(), tmp_path / "HR18-AFLW-random.pth")
    config = LandmarkConfig(backend="hrnet", hrnet_checkpoint=str(tmp_path / "HR18-AFLW-random.pth"), device="cpu")
    crops = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    table, quarantine = landmarks_shard(crops, [7], config, progress=False)
    assert table.schema.equals(landmarks_schema(19), check_metadata=False) and quarantine == []
    assert table.column("backend").to_pylist() == ["hrnet"]
    points = points_from_table(table)                       # fp32 CPU path of pipeline.models.hrnet.predict
    assert points.dtype == np.float32 and points.shape == (1, 19, 2) and np.all(np.isfinite(points))


class _FakeFan(torch.nn.Module):
    """FAKE 2D-FAN for plumbing tests: heatmaps peaking at cell (20, 40) for every point, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.zeros(x.shape[0], 68, 64, 64)
        maps[:, :, 40, 20] = 1.0
        return maps


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_fan_backend_maps_heatmaps_back_to_crop_pixels(tmp_path):
    torch.jit.script(_FakeFan()).save(str(tmp_path / "fake_2dfan4.pth"))
    config = LandmarkConfig(backend="fan", fan_checkpoint=str(tmp_path / "fake_2dfan4.pth"), device="cpu")
    table, _ = landmarks_shard(np.zeros((2, 256, 256, 3), np.uint8), [0, 1], config, progress=False)
    expected = geometry.map_points(np.array([[20.5 * 4 - 0.5, 40.5 * 4 - 0.5]]),
                                geometry.invert_transform(fan_input_transform(256)))[0]
    np.testing.assert_allclose(points_from_table(table)[:, 0], [expected, expected], atol=1e-3)


def test_missing_checkpoints_name_the_config_key():
    crops = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(BackendMissingError, match="hrnet_checkpoint"):
        landmarks_shard(crops, [0], LandmarkConfig(backend="hrnet"))
    with pytest.raises(BackendMissingError, match="fan_checkpoint"):
        landmarks_shard(crops, [0], LandmarkConfig(backend="fan", fan_checkpoint="/nonexistent/2DFAN4.zip"))
    with pytest.raises(ConfigError, match="valid choices"):
        LandmarkConfig(backend="mediapipe")


def test_hrnet_input_puts_the_face_box_in_the_central_80_percent():
    x, y, w, h = geometry.template_box(256)
    box = np.array([[x - 0.5, y - 0.5], [x + w - 0.5, y + h - 0.5]])
    corners = geometry.map_points(box, hrnet_input_transform(256))
    np.testing.assert_allclose(corners, [[25.1, 25.1], [229.9, 229.9]], atol=0.2)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_unusable_checkpoints_fail_in_check_backend_naming_the_key_and_file(tmp_path):
    from pipeline.stages.landmarks import check_backend

    corrupt = tmp_path / "HR18-AFLW.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is no torch checkpoint")
    config = LandmarkConfig(backend="hrnet", hrnet_checkpoint=str(corrupt), device="cpu")
    with pytest.raises(ConfigError, match=r"LandmarkConfig\.hrnet_checkpoint .*HR18-AFLW\.pth.*cannot be read"):
        check_backend(config)
    crops = np.zeros((3, 64, 64, 3), np.uint8)
    with pytest.raises(ConfigError, match="hrnet_checkpoint"):      # at once, never one quarantine row per image
        landmarks_shard(crops, [0, 1, 2], config, progress=False)
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(ConfigError, match=r"hrnet_checkpoint .*resnet\.pth.*head\.3\.weight"):
        check_backend(LandmarkConfig(backend="hrnet", hrnet_checkpoint=str(tmp_path / "resnet.pth")))
    (tmp_path / "2DFAN4.pth").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"LandmarkConfig\.fan_checkpoint .*2DFAN4\.pth"):
        check_backend(LandmarkConfig(backend="fan", fan_checkpoint=str(tmp_path / "2DFAN4.pth"), device="cpu"))


class _NotAFan(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 19, 32, 32)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_wrong_architecture_fan_checkpoint_fails_before_any_crop(tmp_path):
    from pipeline.stages.landmarks import check_backend

    torch.jit.script(_NotAFan()).save(str(tmp_path / "other.pth"))
    with pytest.raises(ConfigError, match=r"fan_checkpoint .*other\.pth.*\(1, 19, 32, 32\)"):
        check_backend(LandmarkConfig(backend="fan", fan_checkpoint=str(tmp_path / "other.pth"), device="cpu"))


def test_dlib_landmarks_are_the_same_from_1_and_4_threads(synthetic_crops):
    from concurrent.futures import ThreadPoolExecutor

    crops = synthetic_crops[0]
    serial, _ = landmarks_shard(crops, np.arange(len(crops)), LandmarkConfig(), progress=False)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda s: landmarks_shard(crops[s:s + 3], np.arange(s, s + 3), LandmarkConfig(),
                                                        progress=False)[0], range(0, len(crops), 3)))
    assert pa.concat_tables(parts).equals(serial)
