"""Command line: train one method on one prepared dataset version and noise variant.

    python -m training.train --dataset synthetic --method baseline --noise sym-0.30 \\
        [--config FILE] [--set optim.name=sgd ...] [--epochs 2 --batch-size 32 --lr 1e-3 ...] [--resume RUN_DIR]

Configuration layers: built-in defaults <- training/configs/<method>.yaml <- --config FILE <- `--set key=value`
and the shortcut flags (each a declared alias of one `--set` key, TRAIN_ALIASES, listed by --help), in
command-line order. Under torchrun the same command trains with DDP:

    torchrun --nproc_per_node 2 -m training.train --dataset synthetic --method baseline --noise clean
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from pipeline.contract.cli import Alias, config_parser, overrides_of
from pipeline.contract.errors import ConfigError, FerError

# The one table of this command's shortcut flags: each is `--set KEY=VALUE` (in command-line order with --set).
TRAIN_ALIASES = (
    Alias("--epochs", "epochs"),
    Alias("--batch-size", "batch_size", help="per process"),
    Alias("--version", "version", help="prepared version id (default: latest)"),
    Alias("--lr", "optim.lr"),
    Alias("--image-size", "data.image_size"),
    Alias("--groups-per-batch", "data.groups_per_batch"),
    Alias("--num-workers", "data.num_workers"),
    Alias("--seed", "runtime.seed"),
    Alias("--device", "runtime.device", help="auto | cpu | cuda | cuda:N"),
    Alias("--threads", "runtime.threads"),
    Alias("--max-steps", "runtime.max_steps"),
    Alias("--runs-root", "runtime.runs_root"),
    Alias("--run-id", "runtime.run_id"),
    Alias("--deterministic", "runtime.deterministic", const="true"),
)

EXAMPLES = """
examples:
  python -m training.train --dataset synthetic --method baseline --noise sym-0.30 --epochs 2 --batch-size 32
  python -m training.train --dataset synthetic --method ldl_alsg --noise clean --config training/configs/tiny.yaml
  python -m training.train --dataset rafdb --method lanet --noise clean --set model.weights=/path/msceleb.pth
  python -m training.train --dataset synthetic --method baseline --noise clean --resume runs/<run-id>

keys for --set: epochs batch_size version optim.{name,lr,weight_decay,momentum,grad_clip}
  schedule.{name,warmup_epochs,min_lr_ratio} data.{image_size,resize,sampler,num_workers,flip,color_jitter,
  erasing_p,groups_per_batch,au_neighbors,landmark_neighbors} model.{backbone,weights}
  runtime.{device,recipe_device,bf16,channels_last,compile,deterministic,seed,max_steps,runs_root,run_id,
  eval_every,log_every,progress,tensorboard}
  method_config.<any field of the method's config> (see training/configs/<method>.yaml)
outputs: runs/<run-id>/ config.yaml metrics.jsonl tensorboard/ checkpoints/last.pt results.json report.md
  (printed at the end, with the TensorBoard command); the device choice and its reason are logged first
"""


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[tuple[str, object]]]:
    """The named flags, and the `--set` items and shortcut flags as (key, value) overrides in command-line order."""
    from training.config import TrainConfig

    parser = config_parser("python -m training.train", __doc__.split("\n\n")[0], TRAIN_ALIASES, TrainConfig,
                           epilog=EXAMPLES, config_help="YAML file layered over the method's defaults")
    parser.add_argument("--dataset", required=True, help="prepared dataset name (make prepare DATASET=...)")
    parser.add_argument("--method", required=True, help="baseline | ldl_alsg | lanet | soft | ldlva")
    parser.add_argument("--noise", default="clean", help="label variant: clean, sym-0.30, asym-0.30-s1, ...")
    parser.add_argument("--resume", default=None, help="checkpoint file or run directory to continue")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    return args, overrides_of(args)


def build_config(args: argparse.Namespace, overrides: list[tuple[str, object]]):
    from training.checkpoint import load_checkpoint, resolve_checkpoint
    from training.config import resolve_config

    if not args.resume:
        return resolve_config(args.method, args.dataset, args.noise, args.config, overrides)
    path = resolve_checkpoint(args.resume)
    saved = load_checkpoint(path)["config"]
    for key in ("dataset", "method", "noise"):
        if getattr(args, key) != saved[key]:
            raise ConfigError(f"--{key} {getattr(args, key)!r} differs from the checkpoint's {saved[key]!r} "
                              f"({path}); resume with the same dataset, method and noise")
    return resolve_config(args.method, args.dataset, args.noise, args.config,
                          list(overrides) + [("runtime.resume", str(path))], base=saved)


def main(argv: list[str] | None = None) -> int:
    """The command: one `error: ...` line on stderr for any failure (traceback in the run log), never a raw
    traceback; exit 2 for a refused setting or artefact, 1 for a bug, 130 when interrupted."""
    from training.cli_log import command_log

    with command_log("train") as logged:
        try:
            return _main(argv, logged)
        except FerError as exc:
            logged.failure(exc)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"error: interrupted (log: {logged.path})", file=sys.stderr)
            return 130
        except Exception as exc:     # noqa: BLE001 - a bug: one line here, the traceback in the log
            logged.failure(exc)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"error: {type(exc).__name__}: {first} (traceback in {logged.path})", file=sys.stderr)
            return 1


def _main(argv: list[str] | None, logged) -> int:
    args, overrides = parse_args(argv)
    given = [value for key, value in overrides
             if key.strip("-").replace("-", "_") in ("runs_root", "runtime.runs_root")]
    if given:                       # the log file goes beside the runs even when the config then fails
        logged.runs_root(given[-1])
    config = build_config(args, overrides)
    logged.runs_root(config.runtime.runs_root)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    from training.engine import fit

    final = fit(config)
    if final and os.environ.get("RANK", "0") == "0":   # under torchrun only rank 0 reports
        print(f"test accuracy {final.get('test_accuracy', float('nan')):.4f}, "
              f"mean class accuracy {final.get('test_mean_class_accuracy', float('nan')):.4f}"
              + (f", flipped recovered {final['recovered']:.3f} / memorised {final['memorised']:.3f}"
                 if final.get("n_flipped") else ""))
        print(run_pointers(Path(final["run_dir"])))
    return 0


def run_pointers(run_dir: Path) -> str:
    """Where a finished run's outputs are: its report and the TensorBoard command (paths as typed here)."""
    lines = [f"run: {_relative(run_dir)}"]
    report = run_dir / "report.md"
    lines.append(f"report: {_relative(report)}" if report.is_file() else
                 f"report: off (runtime.report=false); results in {_relative(run_dir / 'results.json')}")
    if (run_dir / "tensorboard").is_dir():
        lines.append(f"tensorboard: {_tensorboard_command()} --logdir {_relative(run_dir / 'tensorboard')}")
    else:
        lines.append(f"tensorboard: off (runtime.tensorboard=false); metrics in {_relative(run_dir / 'metrics.jsonl')}")
    return "\n".join(lines)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _tensorboard_command() -> str:
    """The tensorboard launcher beside this interpreter (the project's .venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "tensorboard"
    return _relative(beside) if beside.is_file() else "tensorboard"


if __name__ == "__main__":
    sys.exit(main())
