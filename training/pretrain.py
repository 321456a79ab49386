"""A pretrained starting point that travels: train a backbone on clean labels, write it under its content hash.

    python -m training.pretrain --dataset synthetic --version <id> [--config FILE] [--set key=value ...]
        [--out pretrained/]

Trains `baseline` (cross-entropy) on the `clean` labels of a prepared version with the trainer (same config
layers and --set keys as training.train), then writes the backbone's weights (the classifier left out, a plain
state_dict) to <out>/<backbone>-<hash>.pt, where <hash> is the first 16 hex digits of the file's SHA-256, and
the recipe beside it as <backbone>-<hash>.json: the dataset, version id and the prepare's recorded options
(for synthetic: the generator seed, so a benchmark can check its source is disjoint), the resolved training
config, the test accuracy reached, the SHA-256 and the torch version. Every method loads it with
`--set model.weights=<out>/<backbone>-<hash>.pt` (training.models.load_backbone_weights).

For the benchmarks the source is a DISJOINT synthetic version: another generator seed (other samples, other
identity morphs; the same two public-domain photographs), clean labels (bench/pretrain_synthetic.py
prepares it and calls `pretrain`). MS-Celeb-1M weights, where a user has them, load through the same key.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from pipeline.contract.config import parse_set
from pipeline.contract.errors import ConfigError, FerError

log = logging.getLogger(__name__)

PRETRAIN_VERSION = "1"
HASH_DIGITS = 16


def backbone_state(method) -> dict:
    """The backbone's tensors of a baseline-like method (its `backbone` module), as plain CPU tensors."""
    backbone = getattr(method, "backbone", None)
    if backbone is None:
        raise ConfigError(f"method {type(method).__name__} has no `backbone` module to export")
    return {key: value.detach().cpu().clone() for key, value in backbone.state_dict().items()}


def write_weights(state: dict, out_dir: str | Path, stem: str, recipe: dict) -> tuple[Path, Path]:
    """Save `state` as <out_dir>/<stem>-<sha256[:16]>.pt and the recipe as .json beside it -> (weights, recipe)."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{stem}.{os.getpid()}.tmp"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    weights = out_dir / f"{stem}-{digest[:HASH_DIGITS]}.pt"
    os.replace(tmp, weights)
    recipe_path = weights.with_suffix(".json")
    recipe = {**recipe, "weights": weights.name, "sha256": digest, "bytes": weights.stat().st_size,
              "tensors": len(state), "torch": torch.__version__, "pretrain_version": PRETRAIN_VERSION}
    recipe_path.write_text(json.dumps(recipe, indent=2, default=str) + "\n")
    log.info("pretrained backbone written: %s (recipe %s)", weights, recipe_path.name)
    return weights, recipe_path


def pretrain(config, out_dir: str | Path, command: str | None = None) -> tuple[Path, dict]:
    """Train `config` (must be method baseline, noise clean) and export its backbone -> (weights path, recipe)."""
    from training.checkpoint import load_checkpoint
    from training.config import build_method_config
    from training.data import PreparedVersion
    from training.engine import data_info, fit
    from training.methods import method_class

    if config.method != "baseline" or config.noise != "clean":
        raise ConfigError(f"pretraining trains baseline on clean labels, got method {config.method!r}, "
                          f"noise {config.noise!r}")
    final = fit(config)
    ckpt = load_checkpoint(final["run_dir"])
    version = PreparedVersion.open(config.dataset, ckpt["dataset_version"], config.artifacts_root,
                                   config.manifests_root)
    info, _ = data_info(config, version, version.split_data("train", "clean"))
    method = method_class("baseline")(build_method_config(config), info)
    method.load_state_dict(ckpt["method"])
    recipe = {"dataset": config.dataset, "dataset_version": version.version,
              "prepare_config": version.lock.get("config"), "backbone": config.model.backbone,
              "image_size": config.data.image_size, "resize": config.data.resize,
              "test_accuracy": final.get("test_accuracy"), "epochs": config.epochs,
              "train_config": config.to_dict(), "command": command, "run_dir": final["run_dir"]}
    weights, _ = write_weights(backbone_state(method), out_dir, config.model.backbone, recipe)
    return weights, recipe


def main(argv: list[str] | None = None) -> int:
    from training.config import resolve_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--version", default=None, help="prepared version id (default: latest)")
    parser.add_argument("--config", default=None, help="YAML layered over configs/baseline.yaml")
    parser.add_argument("--out", default="pretrained", help="folder of the weights and recipes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        overrides = [parse_set(item) for item in args.set]
        if args.version:
            overrides.append(("version", args.version))
        config = resolve_config("baseline", args.dataset, "clean", args.config, overrides)
        command = "python -m training.pretrain " + " ".join(argv if argv is not None else sys.argv[1:])
        weights, recipe = pretrain(config, args.out, command)
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"weights: {weights}\nrecipe: {weights.with_suffix('.json')}\n"
          f"test accuracy on its own source: {recipe['test_accuracy']:.4f}\n"
          f"use: --set model.weights={weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
