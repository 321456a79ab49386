"""HRNet-W18 landmark inference throughput: images/s at batch 256, bf16 autocast, channels_last.

pipeline/models/hrnet.py with random weights (only the architecture matters for speed), 256x256 input,
[B, 68, 64, 64] heatmaps out, plus the heatmap decode. Goal (issue 15): >= 3,000 images/s on an H100-class GPU.
fp32 is timed beside bf16 for reference.

    python bench/bench_gpu_hrnet.py                 # on a CUDA machine
    .venv/bin/python bench/bench_gpu_hrnet.py --smoke   # CPU, batch 2: shows the script works

Prints a table and writes bench/results/gpu_hrnet.json (gpu_hrnet_smoke.json with --smoke).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_common import device_info, pick_device, save, timed  # noqa: E402


def measure(device: str, batch: int, dtype: str, steps: int, warmup: int, decode: bool, size: int) -> float:
    """Images/s of HRNet-W18 forward (+ decode) on random [batch, 3, size, size] input in `dtype` (bf16 | fp32)."""
    import torch

    from pipeline.models.hrnet import INPUT_SIZE, HRNetW18, decode_heatmaps

    torch.manual_seed(0)
    model = HRNetW18(68).eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)                          # [B, 3, 256, 256]
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
                if dtype == "bf16" else contextlib.nullcontext())

    def step() -> None:
        with torch.inference_mode(), autocast:
            heatmaps = model(x)                                                    # [B, 68, 64, 64]
            if decode:
                decode_heatmaps(heatmaps.float(), size)

    return batch / timed(step, steps, warmup, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, batch 1 at 64 px, 1 step")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = pick_device(args.smoke, args.device)
    from pipeline.models.hrnet import INPUT_SIZE

    batch, steps, warmup, size = (1, 1, 1, 64) if args.smoke else (args.batch, args.steps, args.warmup, INPUT_SIZE)
    rows = []
    for dtype, decode in (("bf16", True), ("bf16", False), ("fp32", True)):
        rate = measure(device, batch, dtype, steps, warmup, decode, size)
        rows.append({"dtype": dtype, "decode": decode, "batch": batch, "input": size, "images_per_s": round(rate, 2)})
    info = device_info(device)
    print(f"HRNet-W18, {size}x{size} input, batch {batch}, on {info['name']}")
    print("| dtype | with heatmap decode | images/s |\n| --- | --- | ---: |")
    for r in rows:
        print(f"| {r['dtype']} | {'yes' if r['decode'] else 'no'} | {r['images_per_s']:,.1f} |")
    save("gpu_hrnet", args.smoke, {"bench": "bench_gpu_hrnet", "goal": ">= 3000 images/s bf16, batch 256, H100-class",
                                   "machine": info, "steps": steps, "warmup": warmup, "results": rows}, args.out)


if __name__ == "__main__":
    main()
