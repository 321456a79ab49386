"""A tiny prepared version of the synthetic dataset, built directly from the generator's ground truth.

Used by the trainer's tests (tests/training/conftest.py: `tiny_prepared_version`) and the science bench
until the real `make prepare` flow is the way to get one. It writes exactly the artefact contract
(samples, crops, landmarks, action units, graphs, label variants, lock) but skips detection: the crop
is a similarity box around the generator's true landmarks, landmarks and AUs are the generator's true
values, graphs are exact brute-force KNN, and the valence-arousal columns are FAKE (a fixed VA point
per class plus seeded jitter) so VA-space methods (LDLVA) have something to run on. Every value is
seeded. Importing pipeline.synthetic/versioning here is a deliberate exception to the training layering:
this module builds test data, the trainer itself never calls it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.contract import graphs
from pipeline.contract import tables as art
from pipeline.contract.crops import create_crop_store, write_valid_mask

log = logging.getLogger(__name__)

TESTBED_VERSION = "1.0"

# FAKE valence/arousal per canonical class (neutral, happiness, sadness, surprise, fear, disgust, anger,
# contempt): a plausible circumplex position, only so VA-space code paths have data.
FAKE_VA_PER_CLASS = np.array([
    [0.0, 0.0], [0.8, 0.5], [-0.7, -0.4], [0.3, 0.8], [-0.6, 0.7], [-0.7, 0.3], [-0.6, 0.8], [-0.4, 0.2],
], dtype=np.float32)


@dataclass(frozen=True)
class TinyVersion:
    """Where a built tiny version lives."""

    dataset: str
    version: str
    artifacts_root: Path
    manifests_root: Path
    directory: Path
    num_samples: int
    crop_size: int
    variants: tuple[str, ...]


def exact_knn(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force euclidean KNN without self: ([N, K] int64 neighbours, [N, K] float32 distances)."""
    x = features.astype(np.float64)  # [N, D]
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)  # [N, N]
    np.fill_diagonal(d2, np.inf)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]  # [N, K]
    dist = np.sqrt(np.take_along_axis(d2, order, axis=1))
    return order.astype(np.int64), dist.astype(np.float32)


def symmetric_noise(labels: np.ndarray, train: np.ndarray, rate: float, num_classes: int,
                    seed: int) -> np.ndarray:
    """Flip exactly round(rate * n_train) training labels, each uniformly to another class."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    train_ids = np.flatnonzero(train)
    chosen = rng.choice(train_ids, size=round(rate * len(train_ids)), replace=False)
    shift = rng.integers(1, num_classes, size=len(chosen))
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    return noisy


def _crop_transform(points: np.ndarray, size: int, margin: float = 1.6) -> np.ndarray:
    """2x3 affine mapping a square box (margin x landmark extent) around the face onto [0, size)."""
    lo, hi = points.min(0), points.max(0)
    centre = (lo + hi) / 2
    side = margin * float((hi - lo).max())
    scale = size / side
    return np.array([[scale, 0, size / 2 - scale * centre[0]],
                     [0, scale, size / 2 - scale * centre[1]]], dtype=np.float64)


def _graph(features: np.ndarray, k: int, sigma: float, space: str, path: Path) -> None:
    neighbors, dist = exact_knn(features, k)
    similarity = np.exp(-dist.astype(np.float64) ** 2 / (2 * sigma ** 2)).astype(np.float32)
    ids = np.arange(len(features), dtype=np.int64)
    art.write_table(path, graphs.graph_table(ids, neighbors.astype(np.int32), dist, similarity),
                    {"space": space, "K": k, "metric": "euclidean", "sigma": sigma, "backend": "exact",
                     "recall_at_k": 1.0, "note": "testbed exact KNN"})


def build_tiny_version(artifacts_root: str | Path, manifests_root: str | Path, n: int = 120,
                       crop_size: int = 64, seed: int = 0, num_classes: int = 7, k: int = 8,
                       noise_rates: tuple[float, ...] = (0.3,), dataset: str = "synthetic") -> TinyVersion:
    """Generate `n` synthetic samples and write a complete prepared version; returns where it is."""
    import cv2

    from pipeline.contract.lock import write_lock
    from pipeline.store.fingerprint import fingerprint
    from pipeline.synthetic.generator import SyntheticConfig, generate_sample, split_of

    cfg = SyntheticConfig(n=n, seed=seed, num_classes=num_classes)
    version = fingerprint("testbed", TESTBED_VERSION, {"n": n, "crop_size": crop_size, "k": k,
                                                       "num_classes": num_classes,
                                                       "noise": list(noise_rates)}, seed=seed)
    directory = Path(artifacts_root) / dataset / version
    splits = np.array([split_of(cfg, i) for i in range(n)])
    order = np.argsort(splits != "train", kind="stable")  # train first, then test (sorted by split)
    store = create_crop_store(directory / art.CROPS_DIR, n, crop_size)
    labels = np.zeros(n, np.int64)
    landmarks = np.zeros((n, 68, 2), np.float32)
    aus = np.zeros((n, 17), np.float32)
    votes = np.zeros((n, num_classes), np.float32)
    for sid, index in enumerate(order):
        sample = generate_sample(cfg, int(index))
        affine = _crop_transform(sample.landmarks, crop_size)
        store[sid] = cv2.warpAffine(sample.image, affine, (crop_size, crop_size), flags=cv2.INTER_AREA,
                                    borderMode=cv2.BORDER_REPLICATE)
        landmarks[sid] = sample.landmarks @ affine[:, :2].T + affine[:, 2]
        labels[sid], aus[sid], votes[sid] = sample.label, sample.au_intensity, sample.distribution
    store.flush()
    write_valid_mask(directory / art.CROPS_DIR, np.ones(n, bool))
    splits = splits[order]
    rng = np.random.default_rng([seed, 7])
    va = FAKE_VA_PER_CLASS[labels] + rng.normal(0, 0.1, (n, 2)).astype(np.float32)  # [N, 2] FAKE VA
    _write_samples(directory, order, splits, labels, va, votes, crop_size, num_classes)
    ids = np.arange(n, dtype=np.int64)
    art.write_table(directory / art.LANDMARKS, _landmarks_table(ids, landmarks))
    art.write_table(directory / art.ACTION_UNITS, _aus_table(ids, aus))
    _graph(aus, k, 1.0, "au", directory / art.GRAPHS_DIR / "au.parquet")
    _graph(landmarks.reshape(n, -1), k, 68.0 * crop_size / 256, "landmarks",
           directory / art.GRAPHS_DIR / "landmarks.parquet")
    _graph(va, k, 0.5, "va", directory / art.GRAPHS_DIR / "va.parquet")
    variants = ["clean"]
    art.write_table(directory / art.LABELS_DIR / "clean.parquet", art.labels_table(ids, labels, labels))
    for rate in noise_rates:
        name = f"sym-{rate:.2f}"
        noisy = symmetric_noise(labels, splits == "train", rate, num_classes, seed)
        art.write_table(directory / art.LABELS_DIR / f"{name}.parquet", art.labels_table(ids, noisy, labels))
        variants.append(name)
    lock = {"num_classes": num_classes, "crop_size": crop_size, "builder": f"training.testbed@{TESTBED_VERSION}",
            "outputs": {"variants": variants, "graphs": ["au", "landmarks", "va"]}}
    write_lock(dataset, version, lock, root=Path(manifests_root))
    log.info("tiny version %s of %s: %d samples in %s", version, dataset, n, directory)
    return TinyVersion(dataset, version, Path(artifacts_root), Path(manifests_root), directory, n,
                       crop_size, tuple(variants))


def _write_samples(directory: Path, order: np.ndarray, splits: np.ndarray, labels: np.ndarray,
                   va: np.ndarray, votes: np.ndarray, crop_size: int, num_classes: int) -> None:
    schema = art.samples_schema(num_classes, with_va=True, with_votes=True, with_given_box=False)
    n = len(order)
    table = art.pa.table({
        "sample_id": np.arange(n, dtype=np.int64), "split": splits.astype(str).tolist(),
        "relpath": [f"synthetic/{int(i):06d}.png" for i in order], "content_hash": [""] * n,
        "label": labels.astype(np.int8), "source_label": [str(int(v)) for v in labels],
        "valence": va[:, 0], "arousal": va[:, 1], "votes": art.vectors_to_arrow(votes),
        "width": np.full(n, crop_size, np.int32), "height": np.full(n, crop_size, np.int32),
    }, schema=schema)
    art.write_table(directory / art.SAMPLES, table, {"num_classes": num_classes, "fake_va": True})


def _landmarks_table(ids: np.ndarray, points: np.ndarray):
    n, p, _ = points.shape
    return art.pa.table({
        "sample_id": ids, "points": art.vectors_to_arrow(points.reshape(n, 2 * p)),
        "n_points": np.full(n, p, np.int32), "backend": ["synthetic-truth"] * n,
        "score": np.ones(n, np.float32),
    })


def _aus_table(ids: np.ndarray, aus: np.ndarray):
    n = len(ids)
    presence = np.concatenate([aus[:, :16], np.zeros((n, 1), np.float32), aus[:, 16:]], 1) > 0.5  # [N, 18]
    return art.pa.table({
        "sample_id": ids, "intensity": art.vectors_to_arrow(aus),
        "presence": art.vectors_to_arrow(presence.astype(np.float32)), "backend": ["synthetic-truth"] * n,
    })
