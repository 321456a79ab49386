"""Prepare the synthetic version the GPU benches train on (default 10K images, 256 px crops), all cores.

The real prepare with the fast backends the synthetic adapter allows (given boxes, provided 68 points,
default graphs), as bench/prepared.py does, but with every core working and a size fit for a GPU
bench. A second run finds the finished version and computes nothing.

    python bench/gpu_prepare.py --root /tmp/gpu_all/data            # 10K x 256 px
    .venv/bin/python bench/gpu_prepare.py --root /tmp/x --smoke     # 160 x 64 px
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="holds artifacts/, manifests/ and cache/")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="160 images, 64 px crops")
    args = parser.parse_args()
    n, crop = (160, 64) if args.smoke else (args.n, args.crop)
    os.environ.update({"FER_ARTIFACTS": str(args.root / "artifacts"), "FER_MANIFESTS": str(args.root / "manifests")})
    os.environ.setdefault("FER_CACHE", str(args.root / "cache"))
    from bench.prepared import run_prepare, small_overrides

    overrides = [*small_overrides(n, crop, ("clean", "sym-0.30"), 0), "graphs.backend=auto",
                 f"max_workers={args.workers}", "shard_size=250"]
    start = time.perf_counter()
    summary = run_prepare(overrides)
    print(f"prepared {n} synthetic images ({crop} px crops) as version {summary['version']} in "
          f"{time.perf_counter() - start:.1f} s: {summary['path']}")


if __name__ == "__main__":
    main()
