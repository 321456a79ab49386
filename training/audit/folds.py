"""Out-of-fold class probabilities for every training face, from the trainer's own engine.

Fold k's run is an ordinary training run (training.engine.fit) on the label set `<variant>+audit-<hash>-fold<k>`:
the audited variant with fold k held out (training.audit.variants). So each fold is seeded like any run and
resumes like any run: a killed audit finds `oof/fold<k>.npz` for every finished fold and skips it, resumes a
fold whose run has a checkpoint, and starts the others. The held-out faces are then predicted by the fold's
final model (rebuilt by training.engine.setup from its checkpoint) and their softmax probabilities saved.

Folds are stratified by the given labels (scikit-learn's StratifiedKFold, shuffled with the audit seed).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.contract.atomic import atomic_path
from pipeline.contract.classes import class_names
from pipeline.contract.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def assign_folds(labels: np.ndarray, folds: int, seed: int, num_classes: int) -> np.ndarray:
    """[n] fold index (0..folds-1) per training face, stratified by `labels`; one-line errors on bad splits."""
    from sklearn.model_selection import StratifiedKFold

    names = class_names(num_classes)
    counts = np.bincount(labels, minlength=num_classes)   # [C]
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = ", ".join(names[c] for c in present) or "none"
        raise DataError(f"the training split has a single class ({only}, {len(labels)} faces): a label audit "
                        f"needs at least two classes to tell a wrong label from a right one")
    smallest = int(present[np.argmin(counts[present])])
    if folds > counts[smallest]:
        raise ConfigError(f"folds {folds} is larger than class {names[smallest]!r}, which has "
                          f"{int(counts[smallest])} training faces; use --folds {max(2, int(counts[smallest]))} "
                          f"or fewer" if counts[smallest] >= 2 else
                          f"folds {folds}: class {names[smallest]!r} has a single training face, so no fold "
                          f"split can hold it out and train on it; relabel or remove that face first")
    fold = np.empty(len(labels), np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[held] = k
    return fold


@dataclass(frozen=True)
class FoldJob:
    """Everything one fold needs, picklable for a worker process."""

    k: int                   # 1-based fold number
    variant: str             # the audited variant (the held-out faces' given labels)
    config: dict             # the fold run's resolved TrainConfig (to_dict)
    run_dir: str
    oof_path: str
    heldout: np.ndarray      # [m] sample ids held out (sorted)


def run_fold(job: FoldJob) -> str:
    """Train fold `job.k` (or resume it), predict its held-out faces, save oof/fold<k>.npz; returns its path."""
    from training.checkpoint import LAST
    from training.config import config_from_dict
    from training.engine import config_replace, fit

    oof = Path(job.oof_path)
    if oof.is_file():
        log.info("fold %d: finished earlier (%s)", job.k, oof)
        return str(oof)
    config = config_from_dict(job.config)
    run_dir = Path(job.run_dir)
    tic = time.perf_counter()
    if not (run_dir / "results.json").is_file():
        resume = (run_dir / "checkpoints" / LAST).is_file()
        if resume:
            log.info("fold %d: resuming its run %s", job.k, run_dir)
        fit(config_replace(config, runtime={"resume": str(run_dir)}) if resume else config)
    probs, ids = predict_heldout(config, run_dir, job.variant, job.heldout)
    with atomic_path(oof, suffix=".npz") as tmp:
        np.savez(tmp, sample_id=ids, probs=probs)
    log.info("fold %d: %d held-out faces predicted (%.1f s)", job.k, len(ids), time.perf_counter() - tic)
    return str(oof)


def predict_heldout(config, run_dir: Path, variant: str, heldout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([m, C] softmax probabilities, [m] sample ids) of the held-out faces under the fold's last checkpoint."""
    import torch

    from training.data import SplitData
    from training.engine import config_replace, setup
    from training.evaluate import predict
    from training.loader import eval_loader

    run = setup(config_replace(config, runtime={"resume": str(run_dir), "tensorboard": False}))
    try:
        train = run.version.split_data("train", variant)
        rows = np.searchsorted(train.sample_id, heldout)
        if not np.array_equal(train.sample_id[np.clip(rows, 0, len(train) - 1)], heldout):
            raise DataError(f"fold run {run_dir}: held-out faces are not in the training split")
        split = SplitData("train-heldout", config.noise, heldout, train.label[rows], train.clean_label[rows])
        out = predict(run.method, eval_loader(run.config, run.version, split, run.device), run.device,
                      channels_last=run.channels_last, autocast=run.autocast)
    finally:
        run.logger.close()
    logits = torch.from_numpy(out["logits"])               # [m, C]
    return torch.softmax(logits.double(), 1).numpy(), out["sample_id"].astype(np.int64)


def run_folds(jobs: list[FoldJob], processes: int = 1) -> list[str]:
    """Every fold, serially or on `processes` spawned worker processes (folds are independent runs)."""
    pending = [job for job in jobs if not Path(job.oof_path).is_file()]
    done = [job.oof_path for job in jobs if Path(job.oof_path).is_file()]
    if done:
        log.info("%d of %d folds finished earlier; %d to run", len(done), len(jobs), len(pending))
    if processes <= 1 or len(pending) <= 1:
        return done + [run_fold(job) for job in pending]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(processes, len(pending)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_logging) as pool:
        return done + list(pool.map(run_fold, pending))


def _worker_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def gather(paths: list[str], sample_id: np.ndarray, num_classes: int) -> np.ndarray:
    """[n, C] out-of-fold probabilities in the order of `sample_id` (each face exactly once)."""
    probs = np.full((len(sample_id), num_classes), np.nan)
    position = {int(s): i for i, s in enumerate(sample_id)}
    for path in paths:
        with np.load(path) as saved:
            rows = [position[int(s)] for s in saved["sample_id"]]
            probs[rows] = saved["probs"]
    if np.isnan(probs).any():
        missing = int(np.isnan(probs).any(1).sum())
        raise DataError(f"{missing} training faces have no out-of-fold prediction; delete the oof/ folder of "
                        f"the audit and run it again")
    return probs
