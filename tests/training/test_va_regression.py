"""va_regression: CCC and the VA loss by hand; a run trains, exports a TorchScript file the pipeline reads alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.contract.errors import ConfigError
from training.config import resolve_config
from training.data import PreparedVersion
from training.engine import fit
from training.methods.va_regression import (
    VaRegressionConfig,
    concordance,
    export_run,
    va_loss,
    va_metrics,
)


def test_concordance_matches_its_formula():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 2))
    p = 0.7 * t + rng.normal(scale=0.3, size=(50, 2)) + 0.1
    expected = [2 * np.cov(p[:, d], t[:, d], bias=True)[0, 1]
                / (p[:, d].var() + t[:, d].var() + (p[:, d].mean() - t[:, d].mean()) ** 2) for d in range(2)]
    np.testing.assert_allclose(concordance(torch.from_numpy(p), torch.from_numpy(t)).numpy(), expected, rtol=1e-10)
    same = torch.from_numpy(t)
    torch.testing.assert_close(concordance(same, same), torch.ones(2, dtype=torch.float64))
    m = va_metrics(p, t)
    assert m["n"] == 50 and m["ccc_valence"] == pytest.approx(expected[0])
    assert m["rmse_arousal"] == pytest.approx(np.sqrt(((p[:, 1] - t[:, 1]) ** 2).mean()))


def test_va_loss_leaves_out_rows_without_va():
    pred = torch.tensor([[0.5, 0.0], [0.1, 0.2], [0.9, -0.9]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [float("nan"), 0.1], [1.0, -1.0]])
    loss = va_loss(pred, target, "mse")
    assert loss.item() == pytest.approx((0.25 + 0 + 0.01 + 0.01) / 4)
    loss.backward()
    assert torch.all(pred.grad[1] == 0)
    assert va_loss(pred, torch.full((3, 2), float("nan"))).item() == 0.0
    both = va_loss(pred, target, "mse+ccc").item()
    assert both == pytest.approx(loss.item() + (1 - concordance(pred[[0, 2]], target[[0, 2]])).mean().item())
    with pytest.raises(ConfigError, match="valid choices"):
        VaRegressionConfig(va_loss="mae")


def test_a_run_exports_a_regressor_the_pipeline_applies_alone(tiny_overrides, tiny_prepared_version, tmp_path):
    from pipeline.stages import pseudo_va

    overrides = tiny_overrides + [("epochs", "2"), ("batch_size", "32"), ("data.resize", "60"),
                                  ("optim.lr", "3e-3"), ("runtime.seed", "0")]
    config = resolve_config("va_regression", tiny_prepared_version.dataset, "clean", None, overrides)
    final = fit(config)
    out = export_run(final["run_dir"], tmp_path / "va.pt")
    assert np.isfinite(out["test_metrics"]["rmse_valence"]) and out["test_metrics"]["n"] > 0
    module, meta = pseudo_va.load_regressor(tmp_path / "va.pt")
    assert meta["input"]["image_size"] == 56 and meta["input"]["source_size"] == 60
    assert meta["trained_on"]["version"] == tiny_prepared_version.version
    pseudo_va.check_backend(pseudo_va.PseudoVAConfig(checkpoint=str(tmp_path / "va.pt")))

    # the same training again, in another run folder, exports the same bytes under another file name (its
    # content hash is part of the pseudo_va stage's version id)
    again = fit(resolve_config("va_regression", tiny_prepared_version.dataset, "clean", None,
                               overrides + [("runtime.run_id", "again")]))
    export_run(again["run_dir"], tmp_path / "other" / "regressor.pt")
    assert (tmp_path / "other" / "regressor.pt").read_bytes() == (tmp_path / "va.pt").read_bytes()

    # the pipeline's preprocessing of stored crops reproduces the trainer's evaluation path
    from training.checkpoint import load_checkpoint
    from training.config import build_method_config
    from training.engine import data_info
    from training.loader import eval_loader
    from training.methods.va_regression import VaRegression, predict_split_va

    version = PreparedVersion.open(config.dataset, tiny_prepared_version.version, config.artifacts_root,
                                   config.manifests_root)
    info, _ = data_info(config, version, version.split_data("train"))
    method = VaRegression(build_method_config(config), info)
    method.load_state_dict(load_checkpoint(final["run_dir"])["method"])
    test = version.eval_split()
    ids, trainer_va = predict_split_va(method, eval_loader(config, version, test, torch.device("cpu")),
                                       torch.device("cpu"))
    pipeline_va = pseudo_va.predict_va(version.crops, ids, module, meta, batch_size=16)
    np.testing.assert_allclose(pipeline_va, trainer_va, atol=2e-5)
