"""The noise benchmark's command line: `python bench/benchmark_noise.py` / `make benchmark-noise`."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from bench.noise import __doc__ as PACKAGE_DOC
from bench.noise.harness import run_benchmark
from bench.noise.plan import (
    DEFAULT_OUT,
    EQUAL_IMAGES,
    PROJECT_ROOT,
    BenchmarkPlan,
    load_benchmark_file,
    trainer_method,
)
from bench.noise.report import format_markdown
from pipeline.contract.cli import Alias, config_parser, overrides_of
from pipeline.contract.errors import ConfigError, FerError

# The one table of this command's shortcut flags: each is `--set KEY=VALUE` of every cell's training config.
BENCH_ALIASES = (
    Alias("--epochs", "epochs"),
    Alias("--batch-size", "batch_size"),
    Alias("--version", "version", help="prepared version id (default: latest)"),
)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def build_plan(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> BenchmarkPlan:
    from training.methods import method_names

    options, common, per_method = load_benchmark_file(args.config)
    methods = _csv(args.methods)
    if args.equal_images and f"baseline{EQUAL_IMAGES}" not in methods:
        methods.append(f"baseline{EQUAL_IMAGES}")
    unknown = [m for m in methods if trainer_method(m) not in method_names()]
    if unknown or not methods:
        raise ConfigError(f"unknown methods {unknown or methods}; valid choices: {', '.join(method_names())} "
                          f"(and <method>{EQUAL_IMAGES}, the equal-images control, or <method>@<name>, a row "
                        f"declared under the benchmark config's methods:)")
    stray = sorted(m for m in per_method if trainer_method(m) not in method_names())
    if stray:
        raise ConfigError(f"benchmark config names unknown methods {stray}; valid: {', '.join(method_names())}")
    undeclared = [m for m in methods if "@" in m and not m.endswith(EQUAL_IMAGES) and m not in per_method]
    if undeclared:
        raise ConfigError(f"named rows {undeclared} need a layer under `methods:` in the benchmark config "
                          f"(e.g. methods: {{ldl_alsg@lam0: {{method_config: {{lam: 0}}}}}}); declared: "
                          f"{sorted(m for m in per_method if '@' in m) or 'none'}")
    try:
        seeds = tuple(int(s) for s in _csv(args.seeds))
    except ValueError as exc:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from exc
    variants = tuple(_csv(args.noise))
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    if not seeds or not variants:
        raise ConfigError("give at least one noise variant (--noise) and one seed (--seeds)")
    name = args.name or str(options.get("name", "benchmark_noise_{dataset}")).format(dataset=args.dataset)
    runs_root = Path(args.runs_root or Path(os.environ.get("FER_RUNS") or PROJECT_ROOT / "runs") / "benchmarks")
    unknown_options = sorted(set(options) - {"name", "notes", "controls"})
    if unknown_options:
        raise ConfigError(f"benchmark config {args.config}: unknown benchmark options {unknown_options}; "
                          f"valid: controls, name, notes")
    notes = options.get("notes")
    return BenchmarkPlan(args.dataset, tuple(methods), variants, seeds, name, Path(args.out), runs_root,
                         common, per_method, tuple(overrides), args.config, args.force, args.jobs,
                         command_line(args), str(notes) if notes else None, args.aggregate_only,
                         _controls(options.get("controls"), args.config))


def _controls(raw, config_file) -> tuple:
    """benchmark: controls: {method: [row, ...]} -> ((method, (row, ...)), ...): the rows a method must beat."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not all(isinstance(v, list) and all(isinstance(r, str) for r in v)
                                            for v in raw.values()):
        raise ConfigError(f"benchmark config {config_file}: benchmark.controls must map a method to a list of "
                          f"row names (e.g. ldlva: [baseline, graph_vote]), got {raw!r}")
    return tuple((str(method), tuple(rows)) for method, rows in raw.items())


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, with the FER_* roots it ran under (for the results' Markdown)."""
    import shlex

    env = [f"{k}={os.environ[k]}" for k in ("FER_ARTIFACTS", "FER_MANIFESTS", "FER_RUNS") if os.environ.get(k)]
    # --aggregate-only rewrites the table the same command trained: the command shown is that one
    argv = [a for a in (getattr(args, "argv", None) or sys.argv[1:]) if a != "--aggregate-only"]
    return " ".join([*env, "python bench/benchmark_noise.py", *(shlex.quote(a) for a in argv)])


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[tuple[str, object]]]:
    from training.config import TrainConfig

    parser = config_parser("python bench/benchmark_noise.py", PACKAGE_DOC.split("\n\n")[0], BENCH_ALIASES,
                           TrainConfig, config_help="benchmark config (e.g. training/configs/benchmark_tiny.yaml)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--methods", default="baseline,ldl_alsg,lanet,soft,ldlva", help="comma-separated")
    parser.add_argument("--noise", default="clean", help="comma-separated noise variants, e.g. clean,sym-0.30")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (default bench/results)")
    parser.add_argument("--name", default=None, help="output file stem (default from the config)")
    parser.add_argument("--runs-root", default=None, help="where cell runs go (default runs/benchmarks)")
    parser.add_argument("--force", action="store_true", help="retrain finished cells too")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells trained at once, each in its own process with one torch thread")
    parser.add_argument("--equal-images", action="store_true",
                        help=f"add the control baseline{EQUAL_IMAGES}: the baseline trained for as many images "
                             f"as the grouped methods see (epochs x (1 + K), the schedule stretched alike)")
    parser.add_argument("--aggregate-only", action="store_true",
                        help="train nothing: write the table of the cells already finished (others shown as -)")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return args, overrides_of(args)   # --set items (training-config keys of every cell) and shortcuts, in order


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args, overrides = parse_args(argv)
        summary = run_benchmark(build_plan(args, overrides))
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_markdown(summary))
    failed = [k for k, a in summary["actions"].items() if a == "failed"]
    print(f"cells: {sum(a == 'trained' for a in summary['actions'].values())} trained, "
          f"{sum(a == 'skipped' for a in summary['actions'].values())} already done, {len(failed)} failed, "
          f"{sum(a == 'not trained' for a in summary['actions'].values())} not trained")
    return 1 if failed else 0
