"""HRNetV2-W18: published size, official state-dict names/shapes, checkpoint loading, heatmap decoding."""
import numpy as np
import pytest
import torch

from pipeline.contract.errors import BackendMissingError, ConfigError
from pipeline.models.hrnet import HRNetW18, decode_heatmaps, load_hrnet, predict  # predict: CPU path in test_landmarks

torch.set_num_threads(2)

# Key names and shapes the official HRNet-Facial-Landmark-Detection model (lib/models/hrnet.py with
# experiments/*/face_alignment_*_hrnet_w18.yaml) gives its parameters: stem, layer1 bottleneck projection,
# transitions (a new branch is Sequential(Sequential(conv, bn, relu))), branch blocks, fuse layers
# (up: conv1x1+bn; down: chain of conv3x3 stride 2) and the head.
OFFICIAL_SHAPES = {
    "conv1.weight": (64, 3, 3, 3), "bn1.running_var": (64,), "conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.3.bn3.weight": (256,),
    "transition1.0.0.weight": (18, 256, 3, 3), "transition1.1.0.0.weight": (36, 256, 3, 3),
    "transition2.2.0.0.weight": (72, 36, 3, 3), "transition3.3.0.0.weight": (144, 72, 3, 3),
    "stage2.0.branches.1.3.conv2.weight": (36, 36, 3, 3),
    "stage2.0.fuse_layers.0.1.0.weight": (18, 36, 1, 1), "stage2.0.fuse_layers.1.0.0.0.weight": (36, 18, 3, 3),
    "stage3.3.branches.2.3.bn2.running_mean": (72,),
    "stage3.3.fuse_layers.2.0.0.0.weight": (18, 18, 3, 3), "stage3.3.fuse_layers.2.0.1.0.weight": (72, 18, 3, 3),
    "stage4.2.branches.3.0.conv1.weight": (144, 144, 3, 3),
    "stage4.2.fuse_layers.0.3.0.weight": (18, 144, 1, 1), "stage4.2.fuse_layers.0.3.1.weight": (18,),
    "stage4.2.fuse_layers.3.0.2.0.weight": (144, 18, 3, 3), "stage4.2.fuse_layers.3.2.0.1.weight": (144,),
    "head.0.weight": (270, 270, 1, 1), "head.0.bias": (270,), "head.1.running_var": (270,),
    "head.3.weight": (19, 270, 1, 1), "head.3.bias": (19,),
}


@pytest.fixture(scope="module")
def model19():
    torch.manual_seed(0)
    return HRNetW18(num_points=19).eval()


def test_published_w18_size(model19):
    params = sum(p.numel() for p in model19.parameters())
    # Exact count the official config builds (19-point head); the paper/README rounds it to "9.3M".
    assert params == 9_641_119
    assert abs(params - 9.3e6) / 9.3e6 < 0.05
    assert sum(p.numel() for p in HRNetW18(68).parameters()) - params == 49 * 270 + 49


def test_state_dict_has_the_official_key_names_and_shapes(model19):
    state = model19.state_dict()
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    weights = [k for k in state if not k.endswith("num_batches_tracked")]
    # BatchNorm layers of the official structure: stem 2, layer1 13, transitions 2+1+1, stage2 1x(16+2),
    # stage3 4x(24+7), stage4 3x(32+16), head 1 = 306; each adds a num_batches_tracked entry.
    bn_layers = 2 + 13 + 4 + 18 + 4 * 31 + 3 * 48 + 1
    assert bn_layers == 306 and len(state) - len(weights) == bn_layers
    assert sum(1 for k in weights if k.endswith("running_var")) == bn_layers
    assert not any(k.startswith(("final_layer", "incre", "downsamp", "classifier")) for k in state)


def test_checkpoint_round_trip(model19, tmp_path):
    state = model19.state_dict()
    # a training checkpoint from DataParallel: {'state_dict': {'module.' + key: ...}}, old torch (no counters)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}}
    torch.save(wrapped, tmp_path / "HR18-AFLW.pth")
    loaded = load_hrnet(tmp_path / "HR18-AFLW.pth")
    assert loaded.num_points == 19
    for key, value in loaded.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key
    torch.save(state, tmp_path / "plain.pth")                     # a bare state dict loads too
    plain = load_hrnet(tmp_path / "plain.pth").state_dict()
    assert all(torch.equal(plain[k], v) for k, v in state.items())


def test_bad_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(BackendMissingError, match="hrnet_checkpoint"):
        load_hrnet(tmp_path / "absent.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="head.3.weight"):
        load_hrnet(tmp_path / "other.pth")
    state = HRNetW18(68).state_dict()
    del state["stage4.0.branches.0.0.conv1.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ConfigError, match="missing"):
        load_hrnet(tmp_path / "broken.pth")


def _gaussian_maps(centres, size=64, sigma=1.5):
    """[B, P, size, size] Gaussians centred at continuous cell coordinates (cell i spans [i, i+1))."""
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    cx, cy = centres[..., 0, None, None], centres[..., 1, None, None]
    return torch.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / (2 * sigma ** 2))


def test_decoder_recovers_planted_peaks_to_subpixel_accuracy():
    gen = torch.Generator().manual_seed(0)
    centres = 4 + torch.rand(8, 19, 2, generator=gen) * 56          # heatmap-cell units
    maps = _gaussian_maps(centres)
    xy, peak = decode_heatmaps(maps, input_size=64)                  # 1 input pixel = 1 cell
    truth = centres - 0.5                                            # continuous -> pixel-index coordinates
    error = (xy - truth).abs()
    assert error.max() <= 0.25 + 1e-4                                 # argmax alone: up to 0.5
    argmax_error = ((torch.floor(centres) - 0.5 + 0.5) - truth).abs()
    assert error.mean() < 0.8 * argmax_error.mean()
    assert torch.all(peak > 0.8)
    xy256, _ = decode_heatmaps(maps, input_size=256)                 # 4 input pixels per cell
    assert ((xy256 - ((centres * 4) - 0.5)).abs().max()) <= 1.0 + 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_on_cuda_matches_fp32(model19):
    crops = np.random.default_rng(1).integers(0, 255, (4, 256, 256, 3), dtype=np.uint8)
    cpu, _ = predict(model19, crops, device="cpu")
    gpu, _ = predict(model19, crops, device="cuda")
    assert np.median(np.abs(cpu - gpu)) < 4.0


# --- the inference runner (pipeline.models.hrnet_infer): compiled step, bf16, batched decode --------------

def _peaked_maps(points: int = 19, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = 6 + torch.rand(batch, points, 2, generator=gen) * 52  # heatmap-cell units
    return _gaussian_maps(centres), centres


@pytest.mark.slow  # dynamo traces all of HRNet: ~100 s on 2 cores; CI runs it with the slow tests
def test_compiled_runner_equals_eager_within_bf16_tolerance(model19):
    """The compiled step (one dynamo graph of preprocess + network + decode, fixed shapes by padding) gives
    eager's results; in bf16 the scores stay within bf16 tolerance of fp32."""
    from pipeline.models.hrnet import preprocess
    from pipeline.models.hrnet_infer import HRNetRunner

    crops = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)  # 2 + 1 padded to 2
    compiled = HRNetRunner(model19, "cpu", compile="yes", batch_size=2, bf16=True, backend="eager")
    eager = HRNetRunner(model19, "cpu", compile="no", batch_size=2, bf16=True)
    fp32 = HRNetRunner(model19, "cpu", compile="no", batch_size=3)
    (pc, sc), (pe, se), (_, s32) = compiled.predict(crops), eager.predict(crops), fp32.predict(crops)
    assert compiled.compiled and pc.shape == (3, 19, 2)
    np.testing.assert_allclose(sc, se, rtol=1e-3)
    np.testing.assert_allclose(pc, pe, atol=1e-3)
    np.testing.assert_allclose(sc, s32, rtol=0.05)  # bf16: 8 bits of mantissa through ~60 layers
    with torch.inference_mode():
        x = preprocess(torch.from_numpy(crops[:1]), torch.device("cpu"))
        ref = model19(x)  # [1, 19, 64, 64] fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model19(x).float()
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max()


def test_bf16_heatmaps_decode_to_the_fp32_points_within_half_a_pixel():
    """Peaked heatmaps rounded to bf16 decode (batched, on the device) to the fp32 points within 0.5 px."""
    maps, _ = _peaked_maps()
    xy32, _ = decode_heatmaps(maps, input_size=256)
    xy16, _ = decode_heatmaps(maps.bfloat16().float(), input_size=256)
    assert (xy16 - xy32).abs().max() < 0.5


def test_runner_falls_back_to_eager_and_says_why(model19, caplog):
    from pipeline.models.hrnet_infer import HRNetRunner

    with caplog.at_level("WARNING", logger="pipeline.models.hrnet_infer"):
        runner = HRNetRunner(model19, "cpu", compile="yes", batch_size=1, backend="no-such-backend")
        points, _ = runner.predict(np.zeros((1, 64, 64, 3), np.uint8))
    assert not runner.compiled and "running eager" in caplog.text and points.shape == (1, 19, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_runner_equals_eager(model19):
    from pipeline.models.hrnet_infer import HRNetRunner

    crops = np.random.default_rng(2).integers(0, 255, (5, 256, 256, 3), dtype=np.uint8)
    compiled = HRNetRunner(model19, "cuda", compile="yes", batch_size=4)
    eager = HRNetRunner(model19, "cuda", compile="no", batch_size=4)
    (pc, sc), (pe, se) = compiled.predict(crops), eager.predict(crops)
    assert compiled.compiled and compiled.mode == "reduce-overhead"
    np.testing.assert_allclose(sc, se, rtol=0.05)
    assert np.median(np.abs(pc - pe)) < 4.0  # random weights: flat heatmaps, argmax may move a cell
