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
