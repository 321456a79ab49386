"""Science bench: baseline vs LDL-ALSG on the synthetic dataset with 30% symmetric label noise, 3 seeds.

Prepares a synthetic version with the real prepare (bench.prepared: given boxes, provided 68 points,
estimated AUs, exact KNN graphs, 64 px crops; cached under runs/science_ldl_alsg/data, so a rerun prepares
nothing; `make prepare` output can be used instead with --artifacts/--manifests), then trains each method
with the tiny CPU config (training/configs/tiny.yaml: tiny CNN, 56 px) for the same number of epochs and
seeds. LDL-ALSG uses 32 groups of 1 + 4 + 4 per batch against the baseline's batch of 32 centres, so both
see every training image once per epoch as a centre (the paper's set-up). Extra LDL-ALSG lambdas can be
added with --extra-lams (the paper's 5e-4 is the main row). The seed changes initial weights, sampling
and augmentation; the noisy labels are the same variant (sym-0.30, noise seed 0) in every run.

Reports final test accuracy, mean class accuracy, and among flipped training samples the share
predicted as the clean label (recovered) and as the noisy label (memorised). Synthetic data checks the
machinery and the method; it is no measure of real-world accuracy.

    .venv/bin/python bench/science_ldl_alsg.py [--epochs 15 --seeds 0,1,2 --n 600 --extra-lams 0.5]

Writes bench/results/science_ldl_alsg.json and .md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from bench.prepared import prepare_small_version
from training.config import resolve_config
from training.engine import fit

METRICS = ("test_accuracy", "test_mean_class_accuracy", "recovered", "memorised")


def run_one(method: str, seed: int, args, roots: tuple[str, str], runs: str, extra: list) -> dict:
    overrides = [("artifacts_root", roots[0]), ("manifests_root", roots[1]), ("epochs", str(args.epochs)),
                 ("runtime.seed", str(seed)), ("runtime.runs_root", runs), ("runtime.report", "false"),
                 ("runtime.log_every", "50"), ("runtime.threads", str(args.threads)),
                 ("runtime.eval_every", str(args.epochs)), ("data.groups_per_batch", "32"), ("batch_size", "32")]
    config = resolve_config(method, "synthetic", args.noise, ROOT / "training/configs/tiny.yaml", overrides + extra)
    tic = time.perf_counter()
    final = fit(config)
    return {**{k: final[k] for k in METRICS}, "seconds": time.perf_counter() - tic}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for key in METRICS:
        values = [r[key] for r in rows]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n", type=int, default=600, help="synthetic samples (80%% train)")
    parser.add_argument("--noise", default="sym-0.30")
    parser.add_argument("--extra-lams", default="", help="comma-separated extra LDL-ALSG lambdas")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--artifacts", default=None, help="use a prepared version here instead of building one")
    parser.add_argument("--manifests", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [("baseline", "baseline", []), ("ldl_alsg", "ldl_alsg (lambda 5e-4)", [])]
    variants += [("ldl_alsg", f"ldl_alsg (lambda {lam})", [("method_config.lam", lam)]) for lam in args.extra_lams.split(",") if lam]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.artifacts:
            roots = (args.artifacts, args.manifests)
        else:
            tic = time.perf_counter()
            version = prepare_small_version(ROOT / "runs" / "science_ldl_alsg" / "data", n=args.n, crop_size=64,
                                            variants=("clean", args.noise))
            roots = (str(version.artifacts_root), str(version.manifests_root))
            print(f"prepared synthetic version {version.version} ({args.n} samples) in {time.perf_counter() - tic:.0f} s")
        for method, label, extra in variants:
            rows = []
            for seed in seeds:
                rows.append(run_one(method, seed, args, roots, str(Path(tmp) / "runs"), extra))
                print(f"{label} seed {seed}: " + ", ".join(f"{k} {rows[-1][k]:.3f}" for k in METRICS) +
                      f" ({rows[-1]['seconds']:.0f} s)")
            results[label] = {"method": method, "overrides": extra, "runs": rows, "summary": summarise(rows)}
    header = "| method | test acc | mean class acc | flipped recovered | flipped memorised |"
    title = f"Synthetic, {args.noise}, {args.epochs} epochs, tiny CNN at 56 px, seeds {args.seeds} (mean ± std)"
    lines = [title, "", header, "| --- | --- | --- | --- | --- |"]
    for label, res in results.items():
        s = res["summary"]
        lines.append(f"| {label} | " + " | ".join(f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in METRICS) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    out = ROOT / "bench" / "results" / "science_ldl_alsg.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()}-core CPU ({platform.machine()}), {args.threads} torch threads"
    out.write_text(json.dumps({"bench": "science_ldl_alsg", "machine": machine, "torch": torch.__version__,
                               "settings": vars(args), "results": results,
                               "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(f"saved {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
