"""Shared bits of the GPU benches (bench_gpu_*.py): device choice, timing, the device's name, JSON out."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

# FER_BENCH_RESULTS moves the JSON files elsewhere (the tests do, so a smoke run leaves the repo as it was)
RESULTS = Path(os.environ.get("FER_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def pick_device(smoke: bool, requested: str = "auto") -> str:
    """'cuda' when torch sees one (unless --smoke or --device cpu), else 'cpu'."""
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() and not smoke else "cpu"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int, device: str) -> float:
    """Seconds per call of `fn` over `steps` calls after `warmup` calls (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / max(steps, 1)


def device_info(device: str) -> dict:
    """The device named as the results must name it (GPU model and driver, or the CPU)."""
    import torch

    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
        info["nvidia_smi"] = smi.stdout.strip()
    else:
        model = ""
        if Path("/proc/cpuinfo").is_file():
            lines = [l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
            model = lines[0].split(":", 1)[1].strip() if lines else ""
        info.update(name=f"CPU: {model}", threads=torch.get_num_threads())
    return info


def save(name: str, smoke: bool, payload: dict, out: Path | None = None) -> Path:
    path = out or RESULTS / (f"{name}_smoke.json" if smoke else f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    print(f"saved {path}")
    return path


# Dense (no structured sparsity) peak TFLOP/s by device and arithmetic, from the vendor's datasheets:
# NVIDIA H100 Tensor Core GPU datasheet (SXM and PCIe columns; its tensor-core figures are quoted "with
# sparsity", halved here), NVIDIA H200 Tensor Core GPU datasheet (same compute as H100 SXM), NVIDIA A100
# Tensor Core GPU datasheet (dense figures), NVIDIA L40S datasheet (halved sparse figures). fp32 is the
# CUDA-core (non-tensor) rate. Matched in order against torch's device name; unknown devices get no share.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("H200", {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
)


def peak_tflops(name: str, arithmetic: str) -> float | None:
    """The datasheet's dense peak for a device name and 'bf16' | 'tf32' | 'fp32'; None when unknown."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peaks.get(arithmetic)
    return None


def count_flops(fn) -> int:
    """Floating-point operations (2 per multiply-add) of one call of fn, by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except Exception as error:  # noqa: BLE001 - a counter that cannot trace (a compiled step): no share, say why
        print(f"FLOP count unavailable ({type(error).__name__}: {str(error)[:120]}); no share of peak")
        return 0
    return int(counter.get_total_flops())


def share_of_peak(flops_per_s: float, info: dict, arithmetic: str) -> dict:
    """{'tflops': achieved, 'peak_tflops': datasheet, 'share_of_peak': ratio or None} for the JSON and table."""
    peak = peak_tflops(info.get("name", ""), arithmetic) if info.get("device", "").startswith("cuda") else None
    peak = peak if flops_per_s > 0 else None
    tflops = flops_per_s / 1e12
    return {"tflops": round(tflops, 3), "arithmetic": arithmetic, "peak_tflops": peak,
            "share_of_peak": round(tflops / peak, 4) if peak else None}


def peak_text(row: dict) -> str:
    share = row.get("share_of_peak")
    return (f"{row['tflops']:.1f} TFLOP/s = {share:.1%} of {row['peak_tflops']:.0f} ({row['arithmetic']})"
            if share is not None else f"{row['tflops']:.3f} TFLOP/s (no peak known for this device)")
