"""Trainer throughput per method as a share of model-only throughput: ResNet-18 at 224, bf16, channels_last.

For every method the trainer's own run is built (training.engine.setup on a prepared synthetic version)
and two loops are timed, alternating for a few rounds (best round kept):
  model_only  train_step on one fixed device batch whose images are random tensors (no data path);
  pipeline    the run's DataLoader (memory-mapped crops, workers, pinned memory) + to_device + train_step.
pipeline / model_only is the share of the model's speed the full trainer keeps (goal, issue 15: >= 80%).
It uses the trainer's public functions only (resolve_config, setup, train_step, to_device, StepInfo,
method_names); bench/bench_train_throughput.py is the CPU-preset sibling.

    python bench/bench_gpu_train.py --artifacts DIR --manifests DIR        # a prepared version (gpu_all.sh)
    .venv/bin/python bench/bench_gpu_train.py --smoke                       # CPU, tiny: shows the script works

Prints a table and writes bench/results/gpu_train.json (gpu_train_smoke.json with --smoke).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_train_throughput import endless_batches  # noqa: E402
from bench.gpu_common import (  # noqa: E402
    count_flops,
    device_info,
    peak_text,
    pick_device,
    save,
    share_of_peak,
    timed,
)

GPU = {"backbone": "resnet18", "image": 224, "batch": 128, "groups": 32, "steps": 30, "warmup": 5}
SMOKE = {"backbone": "tiny", "image": 56, "batch": 16, "groups": 4, "steps": 2, "warmup": 1}
METHODS = ("baseline", "ldl_alsg", "lanet", "soft", "ldlva")


def measure(method: str, dataset: str, roots: tuple[Path, Path], graphs: tuple[str, ...], preset: dict,
            device: str, workers: int, rounds: int, runs_root: str) -> dict:
    import torch

    from training.config import resolve_config
    from training.engine import setup, train_step
    from training.loader import to_device
    from training.methods import StepInfo

    overrides = [("artifacts_root", str(roots[0])), ("manifests_root", str(roots[1])),
                 ("model.backbone", preset["backbone"]), ("data.image_size", str(preset["image"])),
                 ("batch_size", str(preset["batch"])), ("data.groups_per_batch", str(preset["groups"])),
                 ("data.num_workers", str(workers)), ("runtime.runs_root", runs_root), ("runtime.device", device),
                 ("runtime.progress", "false"), ("runtime.tensorboard", "false"), ("runtime.report", "false"),
                 ("epochs", "50")]
    if method.startswith("ldlva") and "va" not in graphs:       # a version without VA lends its AU graph
        overrides += [("data.au_graph", "au"), ("method_config.graph_space", "au")]
    config = resolve_config(method, dataset, "sym-0.30", None, overrides)
    run = setup(config)
    stream = endless_batches(run)
    info = StepInfo(0, 0, run.total_steps, config.epochs)
    fixed = to_device(next(stream), run.device, run.channels_last)
    for key in ("image", "image2"):
        if key in fixed:
            fixed[key] = torch.randn_like(fixed[key])
    images = int(fixed["label"].shape[0])

    def model_step() -> None:
        train_step(run, fixed, info)

    def pipeline_step() -> None:
        train_step(run, to_device(next(stream), run.device, run.channels_last), info)

    best = {"model": float("inf"), "pipeline": float("inf")}
    for _ in range(rounds):
        for name, fn in (("model", model_step), ("pipeline", pipeline_step)):
            best[name] = min(best[name], timed(fn, preset["steps"], preset["warmup"], device))
    model, pipeline = images / best["model"], images / best["pipeline"]
    flops = count_flops(model_step)                             # one training step: forward, backward, update
    bf16 = bool(config.runtime.bf16 and run.device.type == "cuda")
    return {"method": method, "images_per_step": images, "model_only_img_s": round(model, 1),
            "pipeline_img_s": round(pipeline, 1), "pipeline_share": round(pipeline / model, 3),
            "bf16": bf16, "channels_last": run.channels_last, "gflop_per_step": round(flops / 1e9, 2),
            **share_of_peak(flops / best["model"], device_info(device), "bf16" if bf16 else "fp32")}


def find_version(args, smoke: bool):
    """(dataset, (artifacts, manifests), graph spaces) of the version to train on."""
    if args.artifacts:
        artifacts, manifests = Path(args.artifacts), Path(args.manifests)
        latest = (manifests / "versions" / args.dataset / "latest").read_text().strip()
        graphs = tuple(sorted(p.stem for p in (artifacts / args.dataset / latest / "graphs").glob("*.parquet")))
        return args.dataset, (artifacts, manifests), graphs
    from bench.prepared import prepare_small_version

    n, crop = (160, 64) if smoke else (args.n, 256)
    version = prepare_small_version(Path(args.data), n=n, crop_size=crop, variants=("clean", "sym-0.30"))
    return version.dataset, (version.artifacts_root, version.manifests_root), version.graphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny backbone at 56 px, 2 steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--artifacts", help="FER_ARTIFACTS of a prepared version (else one is prepared)")
    parser.add_argument("--manifests", help="FER_MANIFESTS of that version")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data", default=str(ROOT / "runs" / "bench_gpu_train"), help="where to prepare one")
    parser.add_argument("--n", type=int, default=10_000, help="images of the version prepared when none is given")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, help="timed steps per round (default: the preset's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = pick_device(args.smoke, args.device)
    preset = dict(SMOKE if args.smoke else GPU)
    if args.steps:
        preset["steps"] = args.steps
    dataset, roots, graphs = find_version(args, args.smoke)
    workers = min(args.workers, 1) if args.smoke else args.workers
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for method in args.methods.split(","):
            rows.append(measure(method, dataset, roots, graphs, preset, device, workers,
                                1 if args.smoke else args.rounds, runs))
            print(f"{method}: model only {rows[-1]['model_only_img_s']} img/s, pipeline {rows[-1]['pipeline_img_s']} "
                  f"img/s ({rows[-1]['pipeline_share']:.0%})", flush=True)
    info = device_info(device)
    print(f"\n{preset['backbone']} at {preset['image']} px, batch {preset['batch']}, {workers} loader workers, "
          f"on {info['name']}\n")
    print("| method | images/step | model only img/s | full trainer img/s | trainer / model | model-only step vs peak |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['images_per_step']} | {r['model_only_img_s']:,.0f} | {r['pipeline_img_s']:,.0f} "
              f"| {r['pipeline_share']:.0%} | {peak_text(r)} |")
    save("gpu_train", args.smoke, {"bench": "bench_gpu_train", "goal": "trainer >= 90% of model-only, ResNet-18 "
                                   "224 bf16 channels_last", "preset": preset, "workers": workers,
                                   "machine": info, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
