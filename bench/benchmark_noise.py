"""Noise-robustness benchmark (CLI entry; the harness is the bench.noise package).

    python bench/benchmark_noise.py --dataset synthetic --methods baseline,ldl_alsg,lanet,soft,ldlva \
        --noise sym-0.30 --seeds 0,1 --config training/configs/benchmark_tiny.yaml

Same as `python -m bench.noise ...` and `make benchmark-noise DATASET=... METHODS=... NOISE=... SEEDS=...`.
Writes bench/results/<name>.{json,md,csv,png} and one JSON per finished cell in bench/results/<name>_cells/.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.noise.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
