"""The training loader alone against a bare gather of the same crop rows, side by side in one run.

At the paper recipe (224 px images from 256 px crops, batch 128, random crop / flip / colour jitter /
erasing) on a synthetic version built by the real prepare (bench.prepared; cached under
runs/bench_loader/data), for the same sequence of shuffled training batches:

  - gather:   one process, `crops[sorted ids]` on the memory-mapped crop store: what the storage gives;
  - loader:   the trainer's loader (training.loader.make_loader over SplitDataset) with --workers workers:
              the batches it hands to the training step, ready to move to the device;
  - +augment: the loader and `to_device` on this machine's CPU as the training device (float conversion,
              crop, flip, colour jitter, normalisation, erasing): on a CUDA machine this part runs on the
              GPU, here it takes the same two cores, so it is shown but is not the loader's figure.

Every mode passes over the same --batches random training batches from a fresh iterator (the loader's
fill-up is counted, nothing of it runs on in the background); modes alternate for --rounds rounds and
each figure is the median of the rounds (images/s); the load average is recorded before and after. Goal (issue 20): loader >= 50% of gather.

    .venv/bin/python bench/bench_loader.py                    # 2 workers, 3 rounds
    .venv/bin/python bench/bench_loader.py --smoke            # 64 px crops, tiny: checks it runs

Prints a Markdown table and writes bench/results/bench_loader.json (bench_loader_smoke.json with --smoke).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from bench.prepared import prepare_small_version
from training.augment import AugmentConfig
from training.data import PreparedVersion
from training.loader import SplitDataset, make_loader, to_device
from training.samplers import BatchRequest

RECIPE = {"crop": 256, "image": 224, "batch": 128, "n": 1000}
SMOKE = {"crop": 64, "image": 56, "batch": 16, "n": 160}


def _rate(fn) -> float:
    """images/s of one call of fn (it returns its image count)."""
    tic = time.perf_counter()
    images = fn()
    return images / (time.perf_counter() - tic)


def measure(args, recipe: dict) -> dict:
    version = prepare_small_version(ROOT / "runs" / "bench_loader" / "data", n=recipe["n"],
                                    crop_size=recipe["crop"], variants=("clean",))
    pv = PreparedVersion.open(version.dataset, version.version, artifacts_root=version.artifacts_root,
                              manifests_root=version.manifests_root)
    train = pv.split_data("train", "clean")
    rng = np.random.default_rng(0)
    # the same shuffled training batches for every mode; each mode passes over all of them from a fresh
    # iterator (the loader's fill-up counted, nothing left running in the background for the next mode)
    requests = [BatchRequest(0, i, np.sort(rng.choice(len(train), recipe["batch"], replace=False)))
                for i in range(args.batches)]
    dataset = SplitDataset(pv, train, AugmentConfig(recipe["image"]), (), seed=0)
    loader = make_loader(dataset, requests, args.workers, pin_memory=False, prefetch_factor=args.prefetch, seed=0)
    device = torch.device("cpu")

    def gather() -> int:
        return sum(len(pv.crops[np.sort(train.sample_id[r.indices])]) for r in requests)  # [B, S, S, 3] each

    def loading() -> int:
        return sum(int(raw["label"].shape[0]) for raw in loader)

    def augmenting() -> int:
        return sum(int(to_device(raw, device)["image"].shape[0]) for raw in loader)

    modes = {"gather": gather, "loader": loading, "augment": augmenting}
    for fn in modes.values():  # warm: page cache, worker start
        fn()
    rates = {name: [] for name in modes}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, fn in modes.items():
            rates[name].append(_rate(fn))
    loads.append(os.getloadavg()[0])
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {"version": version.version, "train_samples": len(train), "rates": rates, "median_img_s": median,
            "loader_share_of_gather": median["loader"] / median["gather"], "load_1min_before_after": loads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    parser.add_argument("--batches", type=int, default=16, help="batches per mode and round")
    parser.add_argument("--prefetch", type=int, default=4, help="batches each worker gathers ahead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before/after)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = SMOKE if args.smoke else RECIPE
    if args.smoke:
        args.batches, args.rounds = 3, 1
    result = measure(args, recipe)
    m = result["median_img_s"]
    print(f"\nloader at {recipe['image']} px from {recipe['crop']} px crops, batch {recipe['batch']}, "
          f"{args.workers} workers, {os.cpu_count()} cores, load {result['load_1min_before_after']}\n")
    print("| bare gather img/s | loader img/s | loader / gather | loader + CPU augmentation img/s |")
    print("| ---: | ---: | ---: | ---: |")
    print(f"| {m['gather']:.0f} | {m['loader']:.0f} | {result['loader_share_of_gather']:.0%} | {m['augment']:.0f} |")
    name = "bench_loader_smoke.json" if args.smoke else "bench_loader.json"
    out = Path(os.environ.get("FER_BENCH_RESULTS") or ROOT / "bench" / "results") / name
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()).get("runs", []) if out.is_file() and args.label else []
    runs = [r for r in runs if r.get("label") != args.label]
    runs.append({"label": args.label, "recipe": recipe, "workers": args.workers, "threads": args.threads,
                 "batches": args.batches, "rounds": args.rounds, "prefetch": args.prefetch, "cpus": os.cpu_count(),
                 "torch": torch.__version__, "python": platform.python_version(),
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), **result})
    out.write_text(json.dumps({"bench": "bench_loader", "goal": "loader >= 50% of a bare gather", "runs": runs},
                              indent=1) + "\n")
    print(f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
