"""The GPU exact search (pipeline.knn.exact_torch) gives the CPU exact path's neighbours, row for row.

The torch code runs here on the CPU with the candidate products' rounding emulated (inputs rounded to
TF32's or bf16's mantissa, float32 accumulation), so the margin proof and its fallbacks are exercised
as on a GPU; the `gpu`-marked test runs it on CUDA where there is one.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.contract.errors import ConfigError
from pipeline.knn import clustered_points, exact_knn
from pipeline.knn.exact_torch import _search, _Products, error_bound, exact_knn_torch, split_inputs


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("precision", ["tf32x3", "bf16x3", "tf32", "bf16", "fp32"])
def test_equals_the_cpu_exact_path(precision):
    x = clustered_points(700, 136, seed=4)
    np.testing.assert_array_equal(exact_knn_torch(x, 8, device="cpu", precision=precision),
                                  exact_knn(x, 8, device="cpu"))


def test_duplicates_ties_queries_and_self_included():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(300, 3)).astype(np.float32)  # many exact duplicates and ties
    np.testing.assert_array_equal(exact_knn_torch(x, 6, device="cpu"), exact_knn(x, 6, device="cpu"))
    rows = np.array([5, 0, 299, 17])
    np.testing.assert_array_equal(exact_knn_torch(x, 6, rows, exclude_self=False, device="cpu"),
                                  exact_knn(x, 6, rows, exclude_self=False, device="cpu"))


def test_rows_the_margin_cannot_prove_are_retried_and_settled(caplog):
    """Margin 0 proves no row: every row goes through the fp32 retry and then the host, still exact."""
    x = clustered_points(300, 16, seed=1)
    with caplog.at_level("INFO", logger="pipeline.knn.exact_torch"):
        got = exact_knn_torch(x, 5, device="cpu", precision="bf16", margin=0)
    np.testing.assert_array_equal(got, exact_knn(x, 5, device="cpu"))
    assert "not proven with bf16" in caplog.text and "settling on the host" in caplog.text


def test_the_error_bound_holds_for_every_pair():
    """|emulated low-precision score - float64 score| <= E_q for all pairs, with room to spare."""
    x = torch.from_numpy(clustered_points(400, 136, seed=2)).double()
    centred = (x - x.mean(0)).float()  # [N, D]
    exact = centred.double().pow(2).sum(1)[None, :] - 2 * centred.double() @ centred.double().T  # [N, N]
    norms = centred.double().norm(dim=1)  # [N]
    sq = centred.double().pow(2).sum(1).float()
    for precision in ("tf32x3", "bf16x3", "tf32", "bf16"):
        queries, points = split_inputs(centred, precision)
        approx = torch.addmm(sq[None, :], queries, points.T, alpha=-2.0).double()  # [N, N]
        bound = error_bound(norms, float(norms.max()), 136, precision)  # [N]
        ratio = ((approx - exact).abs() / bound[:, None]).max()
        assert ratio < 0.5, (precision, float(ratio))


def test_split_products_prove_every_row_where_single_tf32_cannot():
    """The default tf32x3 candidates are proven for (nearly) every row of dense clustered data."""
    x = torch.from_numpy(clustered_points(20_000, 136, seed=0))
    centred = x - x.double().mean(0).float()
    sq = centred.double().pow(2).sum(1).float()
    rows = torch.arange(0, 20_000, 97)
    shares = {}
    for precision in ("tf32x3", "tf32"):
        _, proven = _search(x, centred, _Products(centred, sq, precision, "cpu"), rows, 8, 64, True, "cpu")
        shares[precision] = float(proven.float().mean())
    assert shares["tf32x3"] >= 0.99 and shares["tf32"] < shares["tf32x3"]


def test_bad_precision_and_k_fail_clearly():
    x = clustered_points(50, 4, seed=0)
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        exact_knn_torch(x, 3, device="cpu", precision="fp8")
    with pytest.raises(ConfigError, match="K=50"):
        exact_knn_torch(x, 50, device="cpu")


@pytest.mark.gpu
def test_cuda_equals_the_cpu_exact_path():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    x = clustered_points(20_000, 136, seed=5)
    cpu = exact_knn(x, 8, device="cpu")
    for precision in ("tf32x3", "bf16x3", "tf32"):
        np.testing.assert_array_equal(exact_knn_torch(x, 8, device="cuda", precision=precision), cpu)
