"""Pretrain a backbone on a DISJOINT synthetic source for the benchmarks (issue 19 item 1).

    python bench/pretrain_synthetic.py [--config training/configs/pretrain_synthetic_cpu.yaml] [--n 2000]
        [--source-seed 1] [--crop 64] [--work /tmp/fer-pretrain] [--out pretrained] [--set key=value ...]

Prepares a synthetic version with generator seed --source-seed (the benchmarks use seed 0: other samples and
other identity morphs of the same two public-domain photographs), clean labels only, with the real prepare
(bench.prepared), then trains `baseline` on it with training.pretrain and writes <out>/<backbone>-<hash>.pt
and its recipe. Prints the `--set model.weights=...` to give every benchmark cell.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

DEFAULT_CONFIG = PROJECT / "training" / "configs" / "pretrain_synthetic_cpu.yaml"
BENCHMARK_SEED = 0      # the generator seed of the benchmark versions (bench/memorisation.py, bench.prepared)


def pretrain_disjoint(work: str | Path, n: int, source_seed: int, crop: int, config_file: str | Path, out: str | Path,
                      overrides: list | None = None, command: str | None = None):
    """Prepare the seed-`source_seed` synthetic source and pretrain on it -> (weights, recipe, version)."""
    from bench.prepared import prepare_small_version
    from pipeline.contract.errors import ConfigError
    from training.config import resolve_config
    from training.pretrain import pretrain

    if source_seed == BENCHMARK_SEED:
        raise ConfigError(f"--source-seed {source_seed} is the benchmarks' own generator seed; pretrain on a "
                          f"disjoint source (another seed)")
    version = prepare_small_version(work, n=n, crop_size=crop, variants=("clean",), seed=source_seed,
                                    cache=os.environ.get("FER_CACHE"))
    layers = [("artifacts_root", str(version.artifacts_root)), ("manifests_root", str(version.manifests_root)),
              ("version", version.version), ("runtime.runs_root", str(Path(work) / "runs"))]
    config = resolve_config("baseline", version.dataset, "clean", config_file, layers + list(overrides or []))
    weights, recipe = pretrain(config, out, command)
    return weights, recipe, version


def main(argv: list[str] | None = None) -> int:
    from pipeline.contract.config import parse_set
    from pipeline.contract.errors import FerError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--source-seed", type=int, default=1)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--work", default="/tmp/fer-pretrain")
    parser.add_argument("--out", default=str(PROJECT / "pretrained"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    command = "python bench/pretrain_synthetic.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        weights, recipe, version = pretrain_disjoint(args.work, args.n, args.source_seed, args.crop, args.config,
                                                     args.out, [parse_set(item) for item in args.set], command)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"source: synthetic seed {args.source_seed}, n={args.n}, version {version.version}; test accuracy "
          f"{recipe['test_accuracy']:.4f}\nweights: {weights}\nuse: --set model.weights={weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
