"""Everything the mechanisms benchmark needs before its table (issue 19 items 1, 2 and 5), in one command.

    python bench/mechanisms.py [--scale cpu|gpu|smoke] [--work /tmp/fer-mechanisms] [--out pretrained]
        [--skip-check]

1. A backbone pretrained on clean labels of a DISJOINT synthetic source (generator seed 1; the benchmark's
   version is seed 0): bench/pretrain_synthetic.py -> <out>/<backbone>-<hash>.pt and its recipe.
2. A valence-arousal regressor (the trainer's `va_regression`, started from those weights) on the same disjoint
   source, exported as TorchScript, for the pseudo_va stage: LDLVA's `va` graph comes from PREDICTED
   valence-arousal, not from the generator's ground truth (which made its neighbours an oracle).
3. The benchmark version (seed 0, the generator's validation split, label variants clean / sym-0.30 / asym-0.30)
   prepared with `pseudo_va.replace=true`, and the regime re-checked on it with bench/memorisation.py under the
   scale's benchmark config and the pretrained weights: on sym-0.30 the pretrained baseline must still lose at
   least 10 points against clean (--skip-check leaves this out).
Prints the noise-harness command of the table (FER_ARTIFACTS / FER_MANIFESTS and --set model.weights=...)
and writes <work>/mechanisms.json with every path and number.

Scales: `cpu` (training/configs/benchmark_mechanisms_cpu.yaml: resnet_small at 32 px, n=1000),
`gpu` (benchmark_mechanisms_cuda.yaml: ResNet-18 at 112 px, n=12000, for bench/gpu_science.sh) and `smoke`
(the tiny backbone, a few steps: checks the chain end to end in a test).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

log = logging.getLogger("bench.mechanisms")
CONFIGS = PROJECT / "training" / "configs"
VARIANTS = ("clean", "sym-0.30", "asym-0.30")
ROWS = "baseline,baseline@scratch,baseline@lr1e-4,graph_vote,graph_vote@va,ldl_alsg,ldl_alsg@lam0,lanet,lanet@delta0.7,soft,ldlva"


@dataclass(frozen=True)
class Scale:
    pretrain_config: str
    benchmark_config: str
    source_n: int
    bench_n: int
    crop: int
    va_epochs: int
    va_overrides: tuple = ()         # (key, value) layered over the pretrain config for the VA regressor
    extra: tuple = ()                # (key, value) for every training run (e.g. the smoke scale's max_steps)
    validation: bool = True          # the benchmark version gets the generator's val split (SOFT's branch choice)


SCALES = {
    "cpu": Scale("pretrain_synthetic_cpu.yaml", "benchmark_mechanisms_cpu.yaml", 2000, 1000, 64, 5),
    "gpu": Scale("pretrain_synthetic_cuda.yaml", "benchmark_mechanisms_cuda.yaml", 12000, 12000, 128, 8),
    # smoke: the test fixtures' 160 seed-0 faces (no val split: their generated images are reused), 120 source faces
    "smoke": Scale("pretrain_synthetic_cpu.yaml", "benchmark_mechanisms_cpu.yaml", 120, 160, 64, 1,
                   extra=(("epochs", 1), ("runtime.max_steps", 2), ("model.backbone", "tiny"),
                          ("runtime.threads", 1)), validation=False),
}


def train_va_regressor(version, weights: Path, scale: Scale, work: Path) -> tuple[Path, dict]:
    """va_regression on the disjoint source's clean version, from the pretrained weights -> (TorchScript, metrics)."""
    from training.config import resolve_config
    from training.engine import fit
    from training.methods.va_regression import export_run

    overrides = [("artifacts_root", str(version.artifacts_root)), ("manifests_root", str(version.manifests_root)),
                 ("version", version.version), ("runtime.runs_root", str(work / "runs")),
                 ("model.weights", str(weights)), ("epochs", scale.va_epochs),
                 ("method_config.va_loss", "mse+ccc"), *scale.va_overrides, *scale.extra]
    config = resolve_config("va_regression", version.dataset, "clean", CONFIGS / scale.pretrain_config, overrides)
    final = fit(config)
    path = work / f"va_regressor_{version.version}.pt"
    exported = export_run(final["run_dir"], path)
    return path, {"test_metrics_on_source": exported.get("test_metrics"), "run_dir": final["run_dir"]}


def _shown(path: Path) -> str:
    """A project file as the results show it: relative to the project root when it lies inside it."""
    return str(path.relative_to(PROJECT)) if path.is_relative_to(PROJECT) else str(path)


def reuse_weights(weights: Path, source_work: Path, scale: Scale, source_seed: int):
    """Weights already pretrained by bench/pretrain_synthetic.py on this source -> (weights, recipe, source version)."""
    from bench.prepared import prepare_small_version
    from pipeline.contract.errors import ConfigError

    recipe_path = weights.with_suffix(".json")
    if not recipe_path.is_file():
        raise ConfigError(f"--weights {weights}: no recipe {recipe_path.name} beside it")
    recipe = json.loads(recipe_path.read_text())
    source = prepare_small_version(source_work, n=scale.source_n, crop_size=scale.crop, variants=("clean",),
                                   seed=source_seed, cache=os.environ.get("FER_CACHE"))
    if recipe.get("dataset_version") != source.version:
        raise ConfigError(f"--weights {weights} were trained on version {recipe.get('dataset_version')}, the source "
                          f"under {source_work} is {source.version}")
    return weights, recipe, source


def main(argv: list[str] | None = None) -> int:
    from bench import memorisation
    from bench.pretrain_synthetic import pretrain_disjoint
    from bench.prepared import prepare_small_version
    from pipeline.contract.errors import FerError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--work", default="/tmp/fer-mechanisms")
    parser.add_argument("--out", default=str(PROJECT / "pretrained"), help="folder of the pretrained weights")
    parser.add_argument("--source-seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--noise", default=",".join(VARIANTS), help="label variants of the benchmark version")
    parser.add_argument("--skip-check", action="store_true", help="do not re-check the memorisation regime")
    parser.add_argument("--source-work", default=None, help="where the disjoint source is prepared (<work>/source)")
    parser.add_argument("--va-regressor", default=None,
                        help="reuse an exported VA regressor (its bytes are part of the benchmark version id)")
    parser.add_argument("--weights", default=None,
                        help="reuse weights pretrained on that source (their recipe .json must sit beside them)")
    args = parser.parse_args(argv)
    scale, work = SCALES[args.scale], Path(args.work)
    variants = tuple(v.strip() for v in args.noise.split(",") if v.strip())
    os.environ.setdefault("FER_CACHE", str(work / "cache"))
    source_work = Path(args.source_work or work / "source")
    try:
        if args.weights:
            weights, recipe, source = reuse_weights(Path(args.weights), source_work, scale, args.source_seed)
        else:
            weights, recipe, source = pretrain_disjoint(source_work, scale.source_n, args.source_seed, scale.crop,
                                                        CONFIGS / scale.pretrain_config, args.out, list(scale.extra),
                                                        f"python bench/mechanisms.py --scale {args.scale}")
        if args.va_regressor:
            va_path, va = Path(args.va_regressor), {"reused": args.va_regressor}
        else:
            va_path, va = train_va_regressor(source, weights, scale, work)
        prepare_extra = (f"pseudo_va.checkpoint={va_path}", "pseudo_va.replace=true")
        version = prepare_small_version(work / "bench", n=scale.bench_n, crop_size=scale.crop, variants=variants,
                                        cache=os.environ["FER_CACHE"],
                                        source_options={"validation": True} if scale.validation else None,
                                        extra=prepare_extra)
        check = None
        if not args.skip_check:
            check_argv = ["--config", _shown(CONFIGS / scale.benchmark_config), "--n", str(scale.bench_n),
                          "--crop", str(scale.crop), "--work", str(work / "bench"),
                          *(["--validation"] if scale.validation else []),
                          "--noise", ",".join(variants),
                          "--threads", str(args.threads), "--min-gap", "0.10", "--pseudo-va", str(va_path),
                          "--name", f"memorisation_mechanisms_{args.scale}",
                          "--set", f"model.weights={weights}"]
            check_argv += [arg for key, value in scale.extra for arg in ("--set", f"{key}={value}")]
            memorisation.main(check_argv)
            check = json.loads((memorisation.RESULTS / f"memorisation_mechanisms_{args.scale}.json").read_text())
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {"scale": args.scale, "scale_settings": asdict(scale), "weights": str(weights),
               "pretrain_recipe": {k: v for k, v in recipe.items() if k != "train_config"},
               "va_regressor": str(va_path), "va_regressor_metrics": va, "bench_version": version.version,
               "env": version.env, "regime_check": check and check.get("checks")}
    (work / "mechanisms.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    env = " ".join(f"{k}={v}" for k, v in version.env.items())
    print(json.dumps(summary, indent=2, default=str))
    print(f"table:\n  {env} python bench/benchmark_noise.py --dataset synthetic "
          f"--methods {ROWS} --equal-images "
          f"--noise {','.join(variants)} --seeds 0,1,2 --jobs 2 --config {_shown(CONFIGS / scale.benchmark_config)} "
          f"--set model.weights={weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
