"""One table of every figure bench/gpu_all.sh wrote (bench/results/gpu_*.json): rate, and share of the
device's datasheet peak (bench/gpu_common.PEAK_TFLOPS) for each model, with the device named.

    python bench/gpu_summary.py            # after bench/gpu_all.sh
    python bench/gpu_summary.py --smoke    # the *_smoke.json files
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_common import RESULTS, peak_text  # noqa: E402


def rows(smoke: bool) -> list[tuple[str, str, str, str]]:
    suffix = "_smoke" if smoke else ""
    out = []
    for name in ("gpu_hrnet", "gpu_knn", "gpu_train"):
        path = RESULTS / f"{name}{suffix}.json"
        if not path.is_file():
            out.append((name, "-", "missing", ""))
            continue
        data = json.loads(path.read_text())
        device = data.get("machine", {}).get("name", "?")
        for r in data.get("results", data.get("rows", [])):
            if "tflops" not in r:
                continue
            if name == "gpu_hrnet":
                what, rate = f"HRNet-W18 {r.get('path', '')} {r['dtype']}", f"{r['images_per_s']:,.0f} img/s"
            elif name == "gpu_knn":
                what, rate = r["method"], f"{r['seconds']} s"
            else:
                what, rate = f"train {r['method']} (model-only step)", f"{r['model_only_img_s']:,.0f} img/s"
            out.append((what, device, rate, peak_text(r)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    print("| model | device | rate | share of peak |\n| --- | --- | ---: | --- |")
    for what, device, rate, peak in rows(args.smoke):
        print(f"| {what} | {device} | {rate} | {peak} |")


if __name__ == "__main__":
    main()
