"""The pseudo_va stage: checkpoint checks before any work, preprocessing, samples.parquet output, fingerprint.

The regressor files here are written by the test (a small traced module with the stage's metadata), so
these tests do not need the trainer; tests/training/test_va_regression.py exports a trained one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.contract import va_regressor
from pipeline.contract.errors import BackendMissingError, ConfigError
from pipeline.contract.tables import read_metadata, read_table
from pipeline.stages import pseudo_va
from pipeline.stages.pseudo_va import PseudoVAConfig

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class _Brightness(nn.Module):
    """valence = tanh(mean pixel), arousal = tanh(-mean of the red channel / 2): [B, 3, h, w] -> [B, 2]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.stack([x.mean(dim=(1, 2, 3)), -0.5 * x[:, 0].mean(dim=(1, 2))], 1))


def write_regressor(path: Path, image_size: int = 24, source_size: int = 32, scale: float = 1.0,
                    meta: dict | None = None) -> Path:
    module = _Brightness()
    traced = torch.jit.trace(module, torch.zeros(1, 3, image_size, image_size))
    if scale != 1.0:  # a different checkpoint content with the same metadata
        traced = torch.jit.trace(nn.Sequential(_Scale(scale), module), torch.zeros(1, 3, image_size, image_size))
    meta = meta if meta is not None else {
        "format": va_regressor.FORMAT, "format_version": 1, "outputs": ["valence", "arousal"],
        "input": {"image_size": image_size, "source_size": source_size, "mean": MEAN, "std": STD},
        "trained_on": {"dataset": "test"}}
    torch.jit.save(traced, str(path), _extra_files={va_regressor.META_FILE: json.dumps(meta)})
    return path


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_a_disabled_stage_checks_nothing():
    assert not PseudoVAConfig().enabled
    pseudo_va.check_backend(PseudoVAConfig())


def test_unusable_checkpoints_fail_in_check_backend(tmp_path):
    with pytest.raises(BackendMissingError, match="is not a file"):
        pseudo_va.check_backend(PseudoVAConfig(checkpoint=str(tmp_path / "missing.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ConfigError, match="not a readable TorchScript"):
        pseudo_va.check_backend(PseudoVAConfig(checkpoint=str(tmp_path / "junk.pt")))
    plain = write_regressor(tmp_path / "plain.pt", meta={"format": "something-else"})
    with pytest.raises(ConfigError, match="fer-va-regressor"):
        pseudo_va.check_backend(PseudoVAConfig(checkpoint=str(plain)))
    no_size = write_regressor(tmp_path / "nosize.pt", meta={"format": va_regressor.FORMAT, "format_version": 1,
                                                            "input": {"mean": MEAN, "std": STD}})
    with pytest.raises(ConfigError, match="image_size"):
        pseudo_va.check_backend(PseudoVAConfig(checkpoint=str(no_size)))
    pseudo_va.check_backend(PseudoVAConfig(checkpoint=str(write_regressor(tmp_path / "good.pt"))))
    with pytest.raises(ConfigError, match="batch_size"):
        PseudoVAConfig(checkpoint="x", batch_size=0)


def test_preprocess_resizes_centre_crops_and_normalises():
    crops = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    meta = {"input": {"image_size": 24, "source_size": 32, "mean": MEAN, "std": STD}}
    x = pseudo_va.preprocess(crops, meta)
    assert x.shape == (3, 3, 24, 24) and x.dtype == torch.float32
    resized = torch.nn.functional.interpolate(torch.from_numpy(crops).permute(0, 3, 1, 2).float(), size=(32, 32),
                                              mode="bilinear", antialias=True, align_corners=False).round()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (resized[:, :, 4:28, 4:28] / 255 - mean) / std
    torch.testing.assert_close(x, expected)
    same = {"input": {"image_size": 24, "source_size": 40, "mean": MEAN, "std": STD}}
    raw = torch.from_numpy(crops[:, 8:32, 8:32]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(pseudo_va.preprocess(crops, same),
                               (raw - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))


def test_fingerprint_follows_the_checkpoint_content_not_its_path(tmp_path):
    a = write_regressor(tmp_path / "a.pt")
    b = tmp_path / "elsewhere" / "a.pt"
    b.parent.mkdir()
    shutil.copy(a, b)
    c = write_regressor(tmp_path / "c.pt", scale=2.0)
    fp = lambda p, **kw: pseudo_va.fingerprint_params(PseudoVAConfig(checkpoint=str(p), **kw))
    assert fp(a) == fp(b)
    assert fp(a) != fp(c)
    assert fp(a) != fp(a, replace=True)
    assert fp(a) == fp(a, batch_size=7, threads=2)     # how it runs does not change the values


@pytest.fixture(scope="module")
def small_version(tmp_path_factory):
    """A small prepared synthetic version (the real prepare), once per module; never written to."""
    from bench.prepared import prepare_small_version

    base = tmp_path_factory.getbasetemp()
    return prepare_small_version(base / "pseudo-va-version", n=40, crop_size=32, variants=("clean",),
                                 cache=base / "fer-cache")


@pytest.fixture
def version_copy(small_version, tmp_path):
    """A copy of the small version's folder, so the stage may rewrite its samples.parquet."""
    target = tmp_path / "copy"
    shutil.copytree(small_version.directory, target)
    return target


def test_apply_writes_pseudo_va_and_keeps_source_va_unless_replace(version_copy, tmp_path):
    checkpoint = write_regressor(tmp_path / "reg.pt", image_size=24, source_size=32)
    before = read_table(version_copy / "samples.parquet")
    assert "valence" in before.column_names            # the synthetic source has its own VA
    kept = pseudo_va.apply_pseudo_va(version_copy, PseudoVAConfig(checkpoint=str(checkpoint)), "h" * 32)
    assert kept["kept_source_va"] and read_table(version_copy / "samples.parquet").equals(before)

    config = PseudoVAConfig(checkpoint=str(checkpoint), replace=True, batch_size=7)
    done = pseudo_va.apply_pseudo_va(version_copy, config, "h" * 32)
    after = read_table(version_copy / "samples.parquet")
    assert done["written"] == after.num_rows == before.num_rows
    assert set(after.column("va_source").to_pylist()) == {"pseudo"}
    assert after.column("label").equals(before.column("label"))
    meta = read_metadata(version_copy / "samples.parquet")
    assert meta["va"] == "pseudo" and meta["va_checkpoint"]["hash"] == "h" * 32
    assert meta["va_checkpoint"]["trained_on"] == {"dataset": "test"}
    crops = np.memmap(version_copy / "crops" / "crops.u8", dtype=np.uint8, mode="r").reshape(-1, 32, 32, 3)
    module, reg_meta = pseudo_va.load_regressor(checkpoint)
    with torch.no_grad():
        expected = module(pseudo_va.preprocess(crops[:5], reg_meta)).numpy()
    np.testing.assert_allclose(after.column("valence").to_numpy()[:5], expected[:, 0], atol=1e-5)
    np.testing.assert_allclose(after.column("arousal").to_numpy()[:5], expected[:, 1], atol=1e-5)
    again = tmp_path / "again"
    shutil.copytree(version_copy, again)
    pseudo_va.apply_pseudo_va(again, PseudoVAConfig(checkpoint=str(checkpoint), replace=True, batch_size=64), "h" * 32)
    assert (again / "samples.parquet").read_bytes() == (version_copy / "samples.parquet").read_bytes()


def test_rows_without_a_crop_get_nulls(version_copy, tmp_path):
    valid = np.load(version_copy / "crops" / "valid.npy") if (version_copy / "crops" / "valid.npy").is_file() \
        else np.ones(read_table(version_copy / "samples.parquet").num_rows, bool)
    valid[[1, 3]] = False
    np.save(version_copy / "crops" / "valid.npy", valid)
    checkpoint = write_regressor(tmp_path / "reg.pt", image_size=24, source_size=32)
    pseudo_va.apply_pseudo_va(version_copy, PseudoVAConfig(checkpoint=str(checkpoint), replace=True), "h" * 32)
    after = read_table(version_copy / "samples.parquet")
    assert after.column("valence").null_count == 2 and after.column("va_source").null_count == 2
    assert after.column("valence")[1].as_py() is None and after.column("valence")[0].as_py() is not None


# ------------------------------------------------------------------- in the prepare runner
FAST = ["source.n=24", "shard_size=12", "align.detector=given", "align.crop_size=32", "landmarks.backend=provided",
        "graphs.backend=exact", "graphs.k=4", "noise.variants=[clean]", "report=false", "max_workers=1"]


def _prepare(options, **fields):
    from pipeline.config import load_prepare_config
    from pipeline.prepare import run_prepare

    return run_prepare(load_prepare_config(None, options, **fields), progress=False)


def test_the_prepare_writes_pseudo_va_before_the_graphs_and_fingerprints_the_checkpoint(tmp_path):
    from pipeline.contract.graphs import read_graph

    first = write_regressor(tmp_path / "first.pt", image_size=24, source_size=32)
    other = write_regressor(tmp_path / "other.pt", image_size=24, source_size=32, scale=3.0)
    plain = _prepare(FAST)
    pseudo = _prepare([*FAST, f"pseudo_va.checkpoint={first}", "pseudo_va.replace=true"])
    assert pseudo["version"] != plain["version"]
    assert pseudo["computed"]["pseudo_va"]["written"] == 24
    directory = Path(pseudo["path"])
    assert read_metadata(directory / "samples.parquet")["va"] == "pseudo"
    graph = read_graph(directory / "graphs" / "va.parquet", with_distances=False)
    assert len(graph.sample_id) > 0
    lock = json.loads((directory / "manifest.json").read_text())
    assert "pseudo_va" in lock["stages"] and str(tmp_path) not in json.dumps(lock)
    moved = tmp_path / "moved" / "first.pt"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    again = _prepare([*FAST, f"pseudo_va.checkpoint={moved}", "pseudo_va.replace=true"])
    assert again["version"] == pseudo["version"] and again["reused"]       # same content, another path
    changed = _prepare([*FAST, f"pseudo_va.checkpoint={other}", "pseudo_va.replace=true"])
    assert changed["version"] != pseudo["version"]
    kept = _prepare([*FAST, f"pseudo_va.checkpoint={first}"])              # the source's own VA is kept
    assert read_metadata(Path(kept["path"]) / "samples.parquet").get("va") != "pseudo"


def test_a_missing_checkpoint_fails_before_any_image_is_read(tmp_path):
    import os

    with pytest.raises(BackendMissingError, match="pseudo_va.checkpoint"):
        _prepare([*FAST, f"pseudo_va.checkpoint={tmp_path / 'absent.pt'}"])
    artifacts = Path(os.environ["FER_ARTIFACTS"])
    assert not (artifacts / "synthetic" / "_parts").exists()
    with pytest.raises(ConfigError, match="pseudo_va"):
        _prepare([*FAST, "pseudo_va.chekpoint=x.pt"])


def test_a_rafdb_shaped_version_gets_a_va_graph_from_pseudo_va(tmp_path):
    from PIL import Image

    root = tmp_path / "rafdb"
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        name = f"{'train' if i < 9 else 'test'}_{i:05d}"
        path = root / "Image" / "aligned" / f"{name}_aligned.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(path, quality=90)
        lines.append(f"{name}.jpg {1 + i % 7}")
    (root / "EmoLabel").mkdir()
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    checkpoint = write_regressor(tmp_path / "reg.pt", image_size=24, source_size=32)
    summary = _prepare(["graphs.spaces=[va]", "graphs.backend=exact", "graphs.k=4", "noise.variants=[clean]",
                        "report=false", "align.crop_size=32", f"pseudo_va.checkpoint={checkpoint}"],
                       dataset="rafdb", root=str(root))
    directory = Path(summary["path"])
    samples = read_table(directory / "samples.parquet")
    assert samples.column("valence").null_count == 0 and set(samples.column("va_source").to_pylist()) == {"pseudo"}
    assert (directory / "graphs" / "va.parquet").is_file()
