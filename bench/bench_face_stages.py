"""Images/s of each face stage and backend on this machine's CPU (and on CUDA when present).

Inputs: --n synthetic faces (256x256, pipeline.synthetic.generator) written as PNGs, plus the astronaut (512x512).
HRNet runs with random weights (same cost as a real checkpoint). FAN and OpenFace are not measured here:
no weights / binary can be fetched on this machine (their wrappers are tested with fakes).

    .venv/bin/python bench/bench_face_stages.py --n 40
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pipeline.contract.tables import vectors_to_arrow
from pipeline.models.hrnet import HRNetW18, predict
from pipeline.stages.action_units import AUConfig, action_units_shard
from pipeline.stages.faces import AlignConfig, detect_align_shard
from pipeline.stages.landmarks import LandmarkConfig, landmarks_shard, points_from_table
from pipeline.synthetic import generator as synthetic


def _timed(fn, count: int) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return count / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--hrnet-n", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = synthetic.SyntheticConfig(n=args.n, seed=1)
        samples = [synthetic.generate_sample(config, i) for i in range(args.n)]
        for s in samples:
            Image.fromarray(s.image).save(root / f"{s.index:05d}.png")
        table = pa.table({"sample_id": pa.array(np.arange(args.n), pa.int64()),
                          "relpath": [f"{i:05d}.png" for i in range(args.n)],
                          "given_bbox": vectors_to_arrow(np.tile([[40, 40, 176, 176]], (args.n, 1))),
                          "given_landmarks": vectors_to_arrow(np.stack([s.landmarks.reshape(-1) for s in samples]))})
        detect_align_shard(table.slice(0, 1), root, AlignConfig(), progress=False)  # load models once
        rates["detect_align dlib (256 px synthetic)"], (faces, crops, _) = _timed(
            lambda: detect_align_shard(table, root, AlignConfig(), progress=False), args.n)
        rates["detect_align given+landmarks"], _ = _timed(
            lambda: detect_align_shard(table, root, AlignConfig(detector="given"), progress=False), args.n)
        rates["detect_align prealigned"], _ = _timed(
            lambda: detect_align_shard(table, root, AlignConfig(detector="prealigned"), progress=False), args.n)
        from skimage import data
        Image.fromarray(data.astronaut()).save(root / "astronaut.png")
        astro = pa.table({"sample_id": pa.array(np.arange(10), pa.int64()), "relpath": ["astronaut.png"] * 10})
        rates["detect_align dlib (512 px astronaut)"], _ = _timed(
            lambda: detect_align_shard(astro, root, AlignConfig(), progress=False), 10)
        ids = np.arange(args.n)
        rates["landmarks dlib"], (lm, _) = _timed(
            lambda: landmarks_shard(crops, ids, LandmarkConfig(), progress=False), args.n)
        rates["landmarks provided"], _ = _timed(lambda: landmarks_shard(
            crops, ids, LandmarkConfig(backend="provided"), samples=table, faces=faces, progress=False), args.n)
        model = HRNetW18(19).eval()
        predict(model, crops[:1], device="cpu")
        rates["landmarks hrnet fp32 CPU (batch 8)"], _ = _timed(
            lambda: predict(model, crops[:args.hrnet_n], device="cpu", batch_size=8), args.hrnet_n)
        if torch.cuda.is_available():
            big = np.concatenate([crops] * max(1, 512 // len(crops)))
            predict(model, big[:64], device="cuda", batch_size=64)
            torch.cuda.synchronize()
            rates["landmarks hrnet bf16 CUDA (batch 256)"], _ = _timed(
                lambda: predict(model, big, device="cuda", batch_size=256), len(big))
        points = points_from_table(lm)
        rates["action_units estimate"], _ = _timed(
            lambda: action_units_shard(None, ids, points, AUConfig()), args.n)
    out = {"machine": f"{platform.machine()} 2-core CPU (shared), Python {platform.python_version()}, "
                      f"torch {torch.__version__}, {'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
           "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
           "threads": {"torch": torch.get_num_threads(), "dlib/opencv": "1 process"},
           "n_images": args.n, "images_per_s": {k: round(v, 1) for k, v in rates.items()},
           "not_measured": "fan (no weights here), openface (no binary here); hrnet GPU goal 3,000 img/s bf16 "
                           "on one H100 needs a GPU task"}
    for name, value in out["images_per_s"].items():
        print(f"{name:42s} {value:>10.1f} img/s")
    path = Path(__file__).parent / "results" / "bench_face_stages.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
