"""Exact K nearest neighbours on a torch device (CUDA; the same code runs on the CPU for tests).

Candidates come from low-precision tensor-core products of centred data with a margin proven large
enough; the candidates are then re-ranked with float64 distances and sorted by (distance, index), as the
CPU exact path (pipeline.knn.exact) does, so both give the same neighbours.

Products. Inputs are rounded here to TF32's (or bf16's) mantissa, so a TF32 unit takes them exactly and
the CPU computes what a GPU would. Default "tf32x3": each vector split as hi = rnd(x), lo = rnd(x - hi),
and hi.hi + hi.lo + lo.hi summed in one GEMM over 3D columns (float32-class accuracy at three TF32
products' cost; on an H100/H200 about 2.5x float32's rate). Single-product "tf32" and "bf16" are kept as
options: measured on 200K x 136-d clustered points, their error bound proves only 14% (tf32, 120 extra
candidates) and 0% (bf16) of rows, against 99.8% for tf32x3 with 56 (94% at 1M x 136: the other 6% go
to the fp32 retry, whose bound is the tightest, with 4 x 56 extra candidates).

The proof. For query q and point j the candidate score is s~_j = |x_j|^2 - 2 dot~(q, x_j), the exact
s_j = |x_j|^2 - 2 q.x_j, and |s~_j - s_j| <= E_q for every j, with u the unit rounding of the inputs
(2^-11 TF32, 2^-9 bf16, 2^-24 fp32), gamma_n = 4 n 2^-24 (four times the IEEE bound of n float32
additions: room for tensor cores' accumulation) and R_max the largest norm:

    single:  |dot~ - q.x| <= (2u + u^2 + gamma_D (1 + u)^2) |q| |x|
    split:   |dot~ - q.x| <= (3u^2 + 2u^3 + gamma_3D (1 + u)^2 (1 + 2u + 2u^2)) |q| |x|
    E_q = 2 c |q| R_max + 2^-22 (R_max^2 + |q| R_max)      (c: the coefficient above; the last term
                                                             covers |x_j|^2 in float32 and the final add)

Let t be the K-th smallest candidate score of q. At least K points have s_j <= t + E_q, so the K-th
smallest exact score is <= t + E_q, and every true neighbour has s~_j <= t + 2 E_q. So when the last
(M-th) candidate kept scores above t + 2 E_q, every true neighbour, and every point tied with the K-th,
is among the M candidates: the float64 re-rank of them is exact. Rows where it is not (a margin too
small for that row) are searched again in fp32 with a wider margin, and rows failing that as well by
float64 over all points on the host (pipeline.knn.exact.exact_row).

The loop: query blocks (size from the device's free memory) x column chunks; per chunk one addmm and a
top-M over the chunk's width (never a sort of a whole million-wide row), merged with the running top-M;
results and the per-row proof stay on the device: the host waits once, after the loop.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np

log = logging.getLogger(__name__)

UNIT_ROUNDING = {"bf16": 2.0 ** -9, "tf32": 2.0 ** -11, "fp32": 2.0 ** -24}  # inputs rounded to nearest
MANTISSA_BITS = {"bf16": 7, "tf32": 10, "fp32": 23}
PRECISIONS = ("tf32x3", "bf16x3", "tf32", "bf16", "fp32")  # x3: split hi + lo, three products in one GEMM
DEFAULT_PRECISION = "tf32x3"
GPU_MARGIN = 56                # candidates beyond K kept per row (the proof decides if they suffice)
COLUMN_CHUNK = 1 << 16         # columns per top-M chunk
CPU_BUDGET = 256 << 20         # bytes of working memory per query block on the CPU
DEVICE_SHARE = 0.25            # share of the device's free memory a query block may use


def round_mantissa(t, bits: int):
    """float32 tensor rounded to `bits` mantissa bits (round half away from zero on the magnitude)."""
    import torch

    if bits >= 23:
        return t
    drop = 23 - bits
    raw = t.contiguous().view(torch.int32)
    rounded = (raw + (1 << (drop - 1))) & ~((1 << drop) - 1)
    return rounded.view(torch.float32)


def _unit(precision: str) -> tuple[float, bool]:
    """(unit input rounding u of the product's inputs, split into hi + lo parts)."""
    return UNIT_ROUNDING[precision.removesuffix("x3")], precision.endswith("x3")


def error_bound(q_norm, r_max: float, dim: int, precision: str):
    """E_q of the module docstring: |candidate score - exact score| <= E_q for every point."""
    u, split = _unit(precision)
    gamma = 4 * (3 * dim if split else dim) * 2.0 ** -24  # 4x the IEEE accumulation bound n 2^-24
    if split:
        dot = 3 * u * u + 2 * u ** 3 + gamma * (1 + u) ** 2 * (1 + 2 * u + 2 * u * u)
    else:
        dot = 2 * u + u * u + gamma * (1 + u) ** 2
    return 2 * dot * q_norm * r_max + 2.0 ** -22 * (r_max * r_max + q_norm * r_max)


def split_inputs(centred, precision: str, as_bf16: bool = False):
    """(queries' factor [N, D'], points' factor [N, D']) whose product is the candidate dot product.

    Single precision: both the rounded data (D' = D). Split ("x3"): hi = rnd(x), lo = rnd(x - hi),
    queries [hi, hi, lo] against points [hi, lo, hi] (D' = 3D): hi.hi + hi.lo + lo.hi in one GEMM.
    """
    import torch

    base = precision.removesuffix("x3")
    if base == "fp32":
        return centred, centred
    bits = MANTISSA_BITS[base]
    hi = round_mantissa(centred, bits)  # [N, D]
    if not precision.endswith("x3"):
        q, x = hi, hi
    else:
        lo = round_mantissa(centred - hi, bits)  # [N, D]; centred - hi is exact in float32
        q, x = torch.cat([hi, hi, lo], 1), torch.cat([hi, lo, hi], 1)  # [N, 3D]
    if as_bf16:  # the values are bf16-representable: the cast is exact
        return q.to(torch.bfloat16), x.to(torch.bfloat16)
    return q, x


class _Products:
    """Scores |x_j|^2 - 2 q.x_j in the chosen precision on one device."""

    def __init__(self, centred, sq, precision: str, device: str):
        import torch

        self.precision, self.sq = precision, sq
        self.cuda = device.startswith("cuda")
        self.bf16_out = False
        if self.cuda and precision.startswith("bf16"):
            try:  # bf16 inputs, float32 accumulation and output, where this torch has it
                probe = torch.ones(2, 2, device=device, dtype=torch.bfloat16)
                torch.mm(probe, probe, out_dtype=torch.float32)
                self.bf16_out = True
            except (RuntimeError, TypeError):
                log.info("torch.mm has no bf16 -> float32 output here: bf16-rounded inputs in TF32 products")
        # rounded explicitly: a TF32 unit takes these values exactly, and the CPU computes what it would
        self.queries, self.points = split_inputs(centred, precision, self.bf16_out)  # [N, D'] each

    def context(self):
        """TF32 products on for tf32/bf16 candidates, and off for fp32 (whatever the process set globally:
        an fp32 pass run in TF32 would break its error bound)."""
        import torch

        if not self.cuda:
            return contextlib.nullcontext()
        want = not self.precision.startswith("fp32")

        @contextlib.contextmanager
        def tf32():
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = want
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
        return tf32()

    def scores(self, q_rows, c0: int, c1: int):
        """[B, c1 - c0] float32 candidate scores of queries q_rows against columns c0..c1."""
        import torch

        q, cols = self.queries[q_rows], self.points[c0:c1]                              # [B, D'], [C, D']
        if self.bf16_out:
            return torch.mm(q, cols.T, out_dtype=torch.float32).mul_(-2.0).add_(self.sq[None, c0:c1])
        return torch.addmm(self.sq[None, c0:c1], q, cols.T, alpha=-2.0)                 # [B, C]


def _block_rows(n: int, d: int, m: int, device: str) -> int:
    """Query rows per block from the memory a block may use (free device memory on CUDA)."""
    import torch

    if device.startswith("cuda"):
        budget = int(torch.cuda.mem_get_info(torch.device(device))[0] * DEVICE_SHARE)
    else:
        budget = CPU_BUDGET
    per_row = 4 * min(n, COLUMN_CHUNK) * 2 + 8 * m * (2 * d + 4) + 64                   # scores + top-M + re-rank
    return max(1, budget // per_row)


def _search(data, centred, products, rows, k: int, m: int, exclude_self: bool, device: str):
    """(best [Q, k] int64, proven [Q] bool) on the device for query positions `rows` [Q] (device tensor)."""
    import torch

    n, d = data.shape
    norms = centred.double().pow(2).sum(dim=1).sqrt()                                  # [N] float64
    r_max = float(norms.max())
    block = _block_rows(n, d, m, device)
    best_out = torch.empty((len(rows), k), dtype=torch.int64, device=device)
    proven = torch.empty(len(rows), dtype=torch.bool, device=device)
    complete = m >= n - (1 if exclude_self else 0)
    inf = torch.tensor(float("inf"), device=device)
    with torch.no_grad(), products.context():
        for start in range(0, len(rows), block):
            q = rows[start:start + block]                                               # [B]
            b = len(q)
            vals = torch.full((b, m), float("inf"), device=device)                      # [B, M] running top-M
            idx = torch.zeros((b, m), dtype=torch.int64, device=device)
            for c0 in range(0, n, COLUMN_CHUNK):
                c1 = min(n, c0 + COLUMN_CHUNK)
                scores = products.scores(q, c0, c1)                                     # [B, C]
                if exclude_self:
                    local = q - c0                                                      # [B]
                    inside = (local >= 0) & (local < c1 - c0)
                    at = local.clamp(0, c1 - c0 - 1)[:, None]                           # [B, 1]
                    scores.scatter_(1, at, torch.where(inside[:, None], inf, scores.gather(1, at)))
                top = scores.topk(min(m, c1 - c0), dim=1, largest=False)                # [B, <=M]
                merged_v = torch.cat([vals, top.values], 1)                             # [B, M + <=M]
                merged_i = torch.cat([idx, top.indices + c0], 1)
                keep = merged_v.topk(m, dim=1, largest=False)                           # [B, M] sorted
                vals, idx = keep.values, merged_i.gather(1, keep.indices)
            bound = vals[:, k - 1] + 2 * error_bound(norms[q], r_max, d, products.precision).float()  # [B]
            proven[start:start + b] = (vals[:, m - 1] > bound) | complete
            diff = data[idx].double() - data[q].double()[:, None, :]                    # [B, M, D] float64
            dist = diff.pow(2).sum(dim=2)                                               # [B, M]
            if exclude_self:
                dist = torch.where(idx == q[:, None], torch.inf, dist)
            idx, by_index = idx.sort(dim=1)
            dist = dist.gather(1, by_index)
            by_distance = dist.argsort(dim=1, stable=True)
            best_out[start:start + b] = idx.gather(1, by_distance)[:, :k]               # [B, k]
    return best_out, proven


def exact_knn_torch(x: np.ndarray, k: int, rows: np.ndarray | None = None, exclude_self: bool = True,
                    device: str = "cuda", precision: str = DEFAULT_PRECISION, margin: int = GPU_MARGIN) -> np.ndarray:
    """Exact K nearest rows of x [N, D] for query positions `rows` [Q] (default all) -> [Q, K] int64.

    Same result as pipeline.knn.exact on the CPU: neighbours by (float64 distance, index).
    """
    import torch

    from pipeline.contract.errors import ConfigError
    from pipeline.knn.exact import exact_row

    if precision not in PRECISIONS:
        raise ConfigError(f"exact search precision {precision!r} is not one of {list(PRECISIONS)}")
    n = x.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    k_max = n - (1 if exclude_self else 0)
    if k > k_max:
        raise ConfigError(f"K={k} neighbours asked of {n} points (at most {k_max})")
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)      # [N, D]
    centred = data - data.double().mean(dim=0).float()                                  # [N, D]
    sq = centred.double().pow(2).sum(dim=1).float()                                     # [N]
    q_all = torch.from_numpy(rows).to(device)                                           # [Q]
    out = torch.empty((len(rows), k), dtype=torch.int64, device=device)
    pending = torch.arange(len(rows), device=device)
    for step, (prec, m) in enumerate(((precision, k + margin), ("fp32", k + 4 * margin))):
        best, proven = _search(data, centred, _Products(centred, sq, prec, device), q_all[pending],
                               k, min(m, k_max), exclude_self, device)
        out[pending] = best
        pending = pending[~proven]                                                      # the one host wait
        if len(pending) == 0:
            break
        log.info("exact search: %d of %d rows not proven with %s candidates (margin %d)%s", len(pending),
                 len(rows), prec, m - k, "; retrying in fp32" if step == 0 else "; settling on the host")
    result = out.cpu().numpy()
    for i in (pending.cpu().numpy() if len(pending) else ()):
        result[i] = exact_row(x, int(rows[i]), k, exclude_self)
    return result
