"""HRNet-W18 landmark inference throughput: images/s at batch 256, bf16 autocast, channels_last.

pipeline/models/hrnet.py with random weights (only the architecture matters for speed), 256x256 input,
[B, 68, 64, 64] heatmaps out, plus the heatmap decode. Goal (issue 20): >= 10,000 images/s on an H100-class GPU.
The production path (pipeline.models.hrnet_infer.HRNetRunner: uint8 crops in, points out, compiled with
CUDA graphs, logged fallback to eager) first, then the eager model in bf16 and fp32 for reference; each
row with its share of the device's datasheet peak (bench/gpu_common.PEAK_TFLOPS).

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

from bench.gpu_common import (  # noqa: E402
    count_flops,
    device_info,
    peak_text,
    pick_device,
    save,
    share_of_peak,
    timed,
)


def flops_per_image(size: int) -> int:
    """HRNet-W18 forward FLOPs for one size x size image (torch's counter, on the CPU)."""
    import torch

    from pipeline.models.hrnet import HRNetW18

    model = HRNetW18(68).eval()
    with torch.inference_mode():
        return count_flops(lambda: model(torch.zeros(1, 3, size, size)))


def measure_runner(device: str, batch: int, steps: int, warmup: int, size: int, compile: str) -> dict:
    """Images/s of the production inference step (pipeline.models.hrnet_infer.HRNetRunner): uint8 crops in,
    points out, bf16 + channels_last + torch.compile (CUDA graphs) on CUDA; the compile choice it made."""
    import numpy as np
    import torch

    from pipeline.models.hrnet import HRNetW18
    from pipeline.models.hrnet_infer import HRNetRunner

    torch.manual_seed(0)
    runner = HRNetRunner(HRNetW18(68), device, compile=compile, batch_size=batch)
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (runner.batch, size, size, 3),
                                                               dtype=np.uint8)).to(device)

    def step() -> None:
        with torch.inference_mode():
            runner._run(crops)

    rate = runner.batch / timed(step, steps, warmup, device)
    return {"path": "runner", "dtype": "bf16" if runner.bf16 else "fp32", "decode": True, "batch": runner.batch,
            "input": size, "compiled": runner.compiled, "compile_mode": runner.mode if runner.compiled else "eager",
            "images_per_s": round(rate, 2)}


def measure(device: str, batch: int, dtype: str, steps: int, warmup: int, decode: bool, size: int) -> float:
    """Images/s of HRNet-W18 forward (+ decode) on random [batch, 3, size, size] input in `dtype` (bf16 | fp32)."""
    import torch

    from pipeline.models.hrnet import HRNetW18, decode_heatmaps

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
    parser.add_argument("--batch", type=int, default=256, help="0: the runner picks it from free memory")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = pick_device(args.smoke, args.device)
    from pipeline.models.hrnet import INPUT_SIZE

    batch, steps, warmup, size = (1, 1, 1, 64) if args.smoke else (args.batch, args.steps, args.warmup, INPUT_SIZE)
    rows = [measure_runner(device, batch, steps, warmup, size, "auto" if not args.smoke else "no")]
    for dtype, decode in (("bf16", True), ("bf16", False), ("fp32", True)):
        rate = measure(device, batch, dtype, steps, warmup, decode, size)
        rows.append({"path": "eager model", "dtype": dtype, "decode": decode, "batch": batch, "input": size,
                     "compiled": False, "images_per_s": round(rate, 2)})
    info = device_info(device)
    flops = flops_per_image(size)
    for r in rows:
        r.update(share_of_peak(r["images_per_s"] * flops, info, r["dtype"]))
    print(f"HRNet-W18, {size}x{size} input, {flops / 1e9:.2f} GFLOP per image, on {info['name']}")
    print("| path | dtype | batch | with heatmap decode | images/s | share of peak |\n| --- | --- | ---: | --- | ---: | --- |")
    for r in rows:
        path = f"{r['path']} ({r.get('compile_mode', 'eager')})"
        print(f"| {path} | {r['dtype']} | {r['batch']} | {'yes' if r['decode'] else 'no'} | {r['images_per_s']:,.1f} "
              f"| {peak_text(r)} |")
    save("gpu_hrnet", args.smoke, {"bench": "bench_gpu_hrnet", "goal": ">= 10000 images/s bf16, batch 256, H100-class",
                                   "machine": info, "gflop_per_image": round(flops / 1e9, 3), "steps": steps,
                                   "warmup": warmup, "results": rows}, args.out)


if __name__ == "__main__":
    main()
