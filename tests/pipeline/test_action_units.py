"""Action units: the OpenFace CSV parser on real output, the wrapper with a fake binary, the estimates."""
import csv
import functools
from pathlib import Path

import numpy as np
import pytest

from pipeline.contract.classes import AU_INTENSITY_NAMES, AU_PRESENCE_NAMES
from pipeline.contract.errors import BackendMissingError, ConfigError
from pipeline.stages import action_units as au

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROWS = FIXTURES / "openface_rows.csv"            # header + 5 rows of OpenFace's own test output
FAKE_BIN = FIXTURES / "fake_openface.py"         # a FAKE binary writing that format
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "OpenFace_Test.csv"


def _independent_parse(path):
    """The same file read with the csv module: names stripped, values as floats."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        names = [n.strip() for n in next(reader)]
        rows = [[float(v) for v in row] for row in reader if row]
    return names, np.array(rows)


@pytest.mark.parametrize("path", [ROWS, REFERENCE], ids=["fixture", "shared-reference"])
def test_parser_reads_real_openface_csv_exactly(path):
    if not path.is_file():
        pytest.skip(f"{path} not present")
    names, values = _independent_parse(path)
    assert names[1].startswith("timestamp") and " timestamp" in path.read_text().splitlines()[0]
    parsed = au.parse_openface_csv(path)
    r_idx = [names.index(f"{a}_r") for a in AU_INTENSITY_NAMES]
    c_idx = [names.index(f"{a}_c") for a in AU_PRESENCE_NAMES]
    np.testing.assert_array_equal(parsed.intensity, values[:, r_idx].astype(np.float32))
    np.testing.assert_array_equal(parsed.presence, values[:, c_idx].astype(np.float32))
    np.testing.assert_array_equal(parsed.frame, values[:, names.index("frame")].astype(np.int64))
    assert parsed.success.all() and parsed.intensity.shape[1] == 17 and parsed.presence.shape[1] == 18


def test_parser_rejects_a_csv_without_au_columns(tmp_path):
    (tmp_path / "x.csv").write_text("frame, timestamp\n1, 0\n")
    with pytest.raises(ConfigError, match="AU01_r"):
        au.parse_openface_csv(tmp_path / "x.csv")


def _crops():
    """Three textured crops (PNG well over 4 KB) and one blank one (the fake reports no face there)."""
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    crops[2] = 0
    return crops


@pytest.mark.parametrize("mode", ["image", "sequence"])
def test_openface_wrapper_runs_once_per_shard_and_quarantines_failures(mode):
    config = au.AUConfig(backend="openface", openface_bin=str(FAKE_BIN), openface_mode=mode)
    table, quarantine = au.action_units_shard(_crops(), np.array([10, 11, 12, 13]), None, config)
    assert table.column("sample_id").to_pylist() == [10, 11, 13]
    assert [(q.sample_id, q.reason) for q in quarantine] == [(12, "openface_success_0")]
    _, values = _independent_parse(ROWS)
    names, _ = _independent_parse(ROWS)
    r_idx = [names.index(f"{a}_r") for a in AU_INTENSITY_NAMES]
    intensity = np.array(table.column("intensity").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(intensity, values[[0, 1, 3]][:, r_idx].astype(np.float32))
    assert table.column("backend").to_pylist() == ["openface"] * 3


def test_openface_env_var_timeout_and_failure(monkeypatch):
    monkeypatch.setenv("OPENFACE_BIN", str(FAKE_BIN))
    crops = _crops()[:1]
    table, _ = au.action_units_shard(crops, [0], None, au.AUConfig(backend="openface"))
    assert table.num_rows == 1
    monkeypatch.setenv("FAKE_OPENFACE_FAIL", "1")
    with pytest.raises(au.OpenFaceError, match="could not load model files"):
        au.action_units_shard(crops, [0], None, au.AUConfig(backend="openface"))
    monkeypatch.delenv("FAKE_OPENFACE_FAIL")
    monkeypatch.setenv("FAKE_OPENFACE_SLEEP", "5")
    with pytest.raises(au.OpenFaceError, match="timed out"):
        au.action_units_shard(crops, [0], None, au.AUConfig(backend="openface", openface_timeout_s=0.5))


def test_missing_openface_binary_names_the_config_key(monkeypatch):
    monkeypatch.delenv("OPENFACE_BIN", raising=False)
    with pytest.raises(BackendMissingError, match="openface_bin.*OPENFACE_BIN"):
        au.action_units_shard(_crops(), [0, 1, 2, 3], None, au.AUConfig(backend="openface"))
    with pytest.raises(BackendMissingError, match="not an executable"):
        au.action_units_shard(_crops(), [0, 1, 2, 3], None,
                              au.AUConfig(backend="openface", openface_bin="/nonexistent/FeatureExtraction"))


# --- estimates ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _neutral_points():
    """A neutral face: the stored calibration's reference is built from such points; use the synthetic one."""
    synthetic = pytest.importorskip("pipeline.synthetic.generator")
    config = synthetic.SyntheticConfig(n=14, seed=5, num_classes=7, blend_share=0.0)
    samples = [synthetic.generate_sample(config, i) for i in range(config.n)]
    return samples


def test_estimates_move_the_right_way_on_geometry():
    samples = _neutral_points()
    neutral = next(s for s in samples if s.label == 0).landmarks.astype(np.float64)
    iod = np.linalg.norm(neutral[42:48].mean(0) - neutral[36:42].mean(0))
    smile = neutral.copy()
    smile[[48, 54], 1] -= 0.08 * iod                        # lip corners up ...
    smile[48, 0] -= 0.06 * iod                              # ... and out
    smile[54, 0] += 0.06 * iod
    jaw = neutral.copy()
    jaw[[56, 57, 58, 65, 66, 67], 1] += 0.2 * iod           # lower lip and jaw drop
    jaw[5:12, 1] += 0.2 * iod
    est = au.estimate_aus(np.stack([neutral, smile, jaw]))
    k12, k26, k25 = (AU_INTENSITY_NAMES.index(a) for a in ("AU12", "AU26", "AU25"))
    assert est[1, k12] > est[0, k12] + 1.0 and est[2, k12] <= est[0, k12] + 1e-6
    assert est[2, k26] > est[0, k26] + 1.0 and est[2, k25] > est[0, k25]
    assert np.all((est >= 0) & (est <= 5))


def test_estimates_follow_the_synthetic_classes():
    samples = _neutral_points()
    points = np.stack([s.landmarks for s in samples])
    labels = np.array([s.label for s in samples])
    est = au.estimate_aus(points)
    k12, k26 = AU_INTENSITY_NAMES.index("AU12"), AU_INTENSITY_NAMES.index("AU26")
    happy, surprise, neutral = est[labels == 1], est[labels == 3], est[labels == 0]
    assert happy[:, k12].min() > neutral[:, k12].max()
    assert surprise[:, k26].min() > neutral[:, k26].max()


def test_estimate_shard_table_and_quarantine():
    samples = _neutral_points()[:3]
    points = np.stack([s.landmarks for s in samples]).astype(np.float32)
    points[1, 5] = np.nan
    table, quarantine = au.action_units_shard(None, [5, 6, 7], points, au.AUConfig())
    assert table.schema.equals(au.AU_SCHEMA, check_metadata=False)
    assert table.column("sample_id").to_pylist() == [5, 7]
    assert [(q.sample_id, q.reason) for q in quarantine] == [(6, "non_finite_landmarks")]
    presence = np.array(table.column("presence").to_pylist())
    assert presence.shape == (2, 18) and set(np.unique(presence)) <= {0.0, 1.0}
    assert np.all(presence[:, AU_PRESENCE_NAMES.index("AU28")] == 0)
    with pytest.raises(ConfigError, match="68-point"):
        au.action_units_shard(None, [0], np.zeros((1, 19, 2)), au.AUConfig())


def test_backends_are_registered_and_checked_before_any_crop(monkeypatch):
    from pipeline.stages import faces, landmarks

    assert au.BACKENDS.names() == ("estimate", "openface")
    assert landmarks.BACKENDS.names() == ("dlib", "hrnet", "fan", "provided")
    assert faces.BACKENDS.names() == ("dlib", "given", "prealigned", "fan")
    monkeypatch.delenv("OPENFACE_BIN", raising=False)
    with pytest.raises(BackendMissingError, match=r"'/nowhere/FaceLandmarkImg' \(AUConfig\.openface_bin"):
        au.check_backend(au.AUConfig(backend="openface", openface_bin="/nowhere/FaceLandmarkImg"))
    with pytest.raises(ConfigError, match="valid choices: estimate, openface"):
        au.AUConfig(backend="mediapipe")
