"""Command line: train one method on one prepared dataset version and noise variant.

    python -m training.train --dataset synthetic --method baseline --noise sym-0.30 \\
        [--config FILE] [--epochs 2 --batch-size 32 --lr 1e-3 ...] [--set optim.name=sgd ...] [--resume RUN_DIR]

Configuration layers: built-in defaults <- training/configs/<method>.yaml <- --config FILE <- the flags.
Any config key can be given as `--key value` (dotted path like --optim.lr, or a unique leaf name like
--lr; dashes or underscores) or as `--set key=value`. Under torchrun the same command trains with DDP:

    torchrun --nproc_per_node 2 -m training.train --dataset synthetic --method baseline --noise clean
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from pipeline.contract.config import parse_set
from pipeline.contract.errors import ConfigError, FerError

EXAMPLES = """
examples:
  python -m training.train --dataset synthetic --method baseline --noise sym-0.30 --epochs 2 --batch-size 32
  python -m training.train --dataset synthetic --method ldl_alsg --noise clean --config training/configs/tiny.yaml
  python -m training.train --dataset rafdb --method lanet --noise clean --set model.weights=/path/msceleb.pth
  python -m training.train --dataset synthetic --method baseline --noise clean --resume runs/<run-id>

common keys: epochs batch_size version optim.{name,lr,weight_decay,momentum,grad_clip}
  schedule.{name,warmup_epochs,min_lr_ratio} data.{image_size,resize,sampler,num_workers,flip,color_jitter,
  erasing_p,groups_per_batch,au_neighbors,landmark_neighbors} model.{backbone,weights}
  runtime.{device,recipe_device,bf16,channels_last,compile,deterministic,seed,max_steps,runs_root,run_id,
  eval_every,log_every,progress,tensorboard}
  method_config.<any field of the method's config> (see training/configs/<method>.yaml)
outputs: runs/<run-id>/ config.yaml metrics.jsonl tensorboard/ checkpoints/last.pt results.json report.md
  (printed at the end, with the TensorBoard command); the device choice and its reason are logged first
"""


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """Named flags, plus every other `--key value` / `--key=value` / `--set key=value` as overrides."""
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="prepared dataset name (make prepare DATASET=...)")
    parser.add_argument("--method", required=True, help="baseline | ldl_alsg | lanet | soft | ldlva")
    parser.add_argument("--noise", default="clean", help="label variant: clean, sym-0.30, asym-0.30-s1, ...")
    parser.add_argument("--config", default=None, help="YAML file layered over the method's defaults")
    parser.add_argument("--resume", default=None, help="checkpoint file or run directory to continue")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any key")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args, rest = parser.parse_known_args(argv)
    overrides = [parse_set(item) for item in args.set]   # the one --set parser (pipeline.contract.config)
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}; config keys are given as --key value")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            key, value = token[2:], rest[i + 1]
            i += 2
        else:
            key, value = token[2:], "true"  # a bare flag switches a boolean on
            i += 1
        overrides.append((key, value))
    return args, overrides


def build_config(args: argparse.Namespace, overrides: list[tuple[str, str]]):
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
