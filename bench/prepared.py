"""Small prepared versions of the synthetic dataset, built by the real prepare (the one road to a batch).

The trainer's tests (tests/training/conftest.py) and the training benches (bench/science_*.py,
bench/bench_train_throughput.py, the noise harness's tests) get their data here: the same prepare that
`make prepare` runs, with the fast backends the synthetic adapter allows and a few small settings:

    align.detector=given          boxes from the generator's known points (as AffectNet gives boxes)
    landmarks.backend=provided    the generator's known 68 points (as AffectNet gives points)
    graphs.backend=exact          brute-force KNN, exact at this size
    align.crop_size=64            small crops, so a tiny CNN trains in seconds
    noise.variants=[...]          only the label variants asked for
    report=false                  no HTML report

The version id, the lock and every table are what the prepare writes; nothing here writes artefacts.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DATASET = "synthetic"
ENV_KEYS = ("FER_ARTIFACTS", "FER_MANIFESTS", "FER_CACHE")
_BUILT: dict[tuple, "SmallVersion"] = {}   # one prepare per process and parameter set


@dataclass(frozen=True)
class SmallVersion:
    """Where a prepared small version lives."""

    dataset: str
    version: str
    artifacts_root: Path
    manifests_root: Path
    directory: Path
    num_samples: int
    crop_size: int
    variants: tuple[str, ...]
    graphs: tuple[str, ...]         # graph spaces the prepare wrote (va only when the source has VA)

    @property
    def env(self) -> dict[str, str]:
        """FER_ARTIFACTS / FER_MANIFESTS pointing at this version (for subprocesses and defaults)."""
        return {"FER_ARTIFACTS": str(self.artifacts_root), "FER_MANIFESTS": str(self.manifests_root)}


def run_prepare(overrides: list[str]) -> dict:
    """The plain prepare runner on `section.key=value` overrides; returns its summary ("version", "path")."""
    from pipeline.config import load_prepare_config
    from pipeline.prepare import run_prepare as run

    return run(load_prepare_config(None, list(overrides)), progress=False)


def small_overrides(n: int, crop_size: int, variants: tuple[str, ...], seed: int,
                    source_options: dict | None = None) -> list[str]:
    """The prepare overrides of a small synthetic version (see the module docstring)."""
    extra = [f"source.{key}={str(value).lower() if isinstance(value, bool) else value}"
             for key, value in sorted((source_options or {}).items())]
    return extra + [f"source.n={n}", f"source.seed={seed}", "align.detector=given", f"align.crop_size={crop_size}",
            "landmarks.backend=provided", "graphs.backend=exact", f"noise.variants=[{', '.join(variants)}]",
            "report=false", "max_workers=1"]


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def prepare_small_version(root: str | Path, n: int = 160, crop_size: int = 64,
                          variants: tuple[str, ...] = ("clean", "sym-0.30"), seed: int = 0,
                          cache: str | Path | None = None, source_options: dict | None = None,
                          extra: tuple[str, ...] = ()) -> SmallVersion:
    """Prepare (or find already prepared) a small synthetic version under `root`/{artifacts,manifests}.

    `cache` holds the generated images (default `root`/cache); the same images serve every n.
    A second call with the same arguments in one process returns at once; in a new process the
    prepare itself finds the finished version and recomputes nothing. `source_options` are more
    generator options (e.g. {"validation": True}: a val split); `extra` more prepare overrides
    (e.g. ("pseudo_va.checkpoint=va.pt", "pseudo_va.replace=true")).
    """
    import pyarrow.parquet as pq

    root = Path(root)
    key = (str(root.resolve()), n, crop_size, tuple(variants), seed, tuple(sorted((source_options or {}).items())),
           tuple(extra))
    if key in _BUILT and _BUILT[key].directory.is_dir():
        return _BUILT[key]
    env = {"FER_ARTIFACTS": str(root / "artifacts"), "FER_MANIFESTS": str(root / "manifests"),
           "FER_CACHE": str(cache or root / "cache")}
    with _environment(env):
        summary = run_prepare(small_overrides(n, crop_size, tuple(variants), seed, source_options) + list(extra))
    directory = Path(summary["path"])
    graphs = tuple(sorted(p.stem for p in (directory / "graphs").glob("*.parquet")))
    rows = pq.ParquetFile(directory / "samples.parquet").metadata.num_rows
    built = SmallVersion(DATASET, summary["version"], root / "artifacts", root / "manifests", directory, rows,
                         crop_size, tuple(variants), graphs)
    log.info("small %s version %s: %d samples, graphs %s, in %s", DATASET, built.version, rows, graphs, directory)
    _BUILT[key] = built
    return built
