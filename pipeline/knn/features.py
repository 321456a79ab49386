"""Features ready for a K-NN search: checked, float32, C-contiguous (L2-normalised for cosine)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.contract.errors import DataError


def prepare_features(features: np.ndarray, metric: str = "euclidean",
                     sample_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """[N, D] -> C-contiguous float32 ready for search; NaN/inf or (cosine) zero rows raise DataError.

    The error names the offending sample ids (row positions when `sample_ids` is None).
    """
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"features must be a non-empty [N, D] array, got shape {x.shape}")
    ids = np.arange(len(x)) if sample_ids is None else np.asarray(sample_ids)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"{int(bad.sum())} feature rows hold NaN or inf; sample_ids "
                        f"{_id_list(ids[bad])}: fix or quarantine them before building a graph")
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)  # [N, 1]
        zero = norms[:, 0] == 0
        if zero.any():
            raise DataError(f"cosine distance is undefined for all-zero feature rows; sample_ids "
                            f"{_id_list(ids[zero])}")
        x = np.ascontiguousarray(x / norms)
    return x


def _id_list(ids: np.ndarray, limit: int = 20) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return f"[{shown}{', ...' if len(ids) > limit else ''}]"
