"""Render a prepared version's report.html and screenshot it with headless chromium.

    .venv/bin/python bench/report_screenshot.py                      # latest synthetic version
    .venv/bin/python bench/report_screenshot.py artifacts/synthetic/<version> --png /tmp/report.png
    .venv/bin/python bench/report_screenshot.py --scale 300000     # report time on random AffectNet-size tables
    .venv/bin/python bench/report_screenshot.py --url http://127.0.0.1:4200/runs --png runs.png   # a live page

`--url` screenshots a live page instead (e.g. the Prefect UI's flow-runs page of `make server`), giving its
scripts `--wait-ms` of virtual time to fetch from the API first; tests/flows/test_schedule.py uses the same
`screenshot` and `rendered_text` on the UI of the server it starts.

Prints the time to build the report (wall and CPU: the machine is shared, so the load average is
recorded too), its size and the screenshot path, and saves
bench/results/report_screenshot.json. Needs Debian's chromium (`apt-get install chromium`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.contract.classes import CLASSES_7
from pipeline.contract.graphs import graph_table
from pipeline.contract.lock import artifacts_root, read_lock
from pipeline.contract.tables import QuarantineRow, quarantine_table, vectors_to_arrow, write_table
from pipeline.report.build import build_report
from pipeline.stages.noise import NoiseConfig, write_variant_set

RESULTS = Path(__file__).resolve().parent / "results" / "report_screenshot.json"


def latest_version_dir(dataset: str) -> Path:
    """The newest prepared version of `dataset` (from data_manifests/versions/<dataset>/latest)."""
    lock = read_lock(dataset)
    return artifacts_root() / dataset / str(lock["version"])


def random_version(out: Path, n: int, seed: int = 0) -> Path:
    """Random tables of `n` samples in the artefact layout (no crop store): for timing the report at scale.

    Not data: uniform labels, random AUs, random landmarks and random neighbours; the default 31 noise
    variants are made by pipeline.stages.noise.
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64)
    labels = rng.integers(0, 7, n).astype(np.int8)
    splits = np.where(rng.random(n) < 0.9, "train", "test")
    samples = pa.table({"sample_id": ids, "split": splits, "label": labels})
    write_table(out / "samples.parquet", samples, {"dataset": "random", "classes": list(CLASSES_7),
                                                   "exclusions": {"non_face": n // 100}})
    write_table(out / "quarantine.parquet", quarantine_table(
        [QuarantineRow(f"{i}.jpg", "faces", "no_face", "", int(i)) for i in rng.choice(n, n // 200, replace=False)]))
    write_table(out / "faces.parquet", pa.table({"sample_id": ids, "status": np.where(rng.random(n) < 0.99, "ok", "no_face")}))
    write_table(out / "landmarks.parquet", pa.table({"sample_id": ids, "points": vectors_to_arrow(rng.random((n, 136)) * 256)}))
    write_table(out / "action_units.parquet", pa.table({
        "sample_id": ids, "intensity": vectors_to_arrow(rng.random((n, 17)) * 5),
        "presence": vectors_to_arrow((rng.random((n, 18)) < 0.3).astype(np.float32)), "backend": ["random"] * n}))
    write_variant_set(out / "labels", samples, NoiseConfig(), 7)
    neighbors = rng.integers(0, n, (n, 8))
    write_table(out / "graphs" / "au.parquet", graph_table(ids, neighbors, rng.random((n, 8)), rng.random((n, 8))),
                {"space": "au", "K": 8, "metric": "euclidean", "sigma": 1.0, "backend": "random", "recall_at_k": None})
    return out


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"     # Debian's package (`apt-get install chromium`)


def _chromium(target: Path | str, action: list[str], width: int, height: int, wait_ms: int,
              timeout_s: float) -> subprocess.CompletedProcess:
    """Headless chromium, offline flags, throwaway profile, on a file (Path) or a URL (str)."""
    uri = target.resolve().as_uri() if isinstance(target, Path) else target
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", "--hide-scrollbars",
                   *([f"--virtual-time-budget={wait_ms}"] if wait_ms else []), *action, uri]
        return subprocess.run(command, check=True, capture_output=True, timeout=timeout_s)


def screenshot(target: Path | str, png: Path, width: int, height: int, wait_ms: int = 0,
               timeout_s: float = 180) -> float:
    """Screenshot a page (an HTML file, or a URL whose scripts get `wait_ms` of virtual time); seconds taken."""
    start = time.perf_counter()
    _chromium(target, [f"--screenshot={png}"], width, height, wait_ms, timeout_s)
    return time.perf_counter() - start


def rendered_text(url: str, wait_ms: int = 15000, timeout_s: float = 120) -> str:
    """The page's DOM after its scripts ran for `wait_ms` of virtual time, tags stripped."""
    dom = _chromium(url, ["--dump-dom"], 1440, 900, wait_ms, timeout_s).stdout.decode(errors="replace")
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def shoot_url(url: str, png: Path, width: int, height: int, wait_ms: int) -> dict:
    """Screenshot a live page; the result row for bench/results/report_screenshot.json."""
    seconds = screenshot(url, png, width, height, wait_ms)
    pixels = np.asarray(Image.open(png).convert("L"))
    return {"machine": f"{platform.machine()} {os.cpu_count()}-core CPU, Python {platform.python_version()}",
            "load_average_1min": os.getloadavg()[0], "url": url, "screenshot": str(png),
            "screenshot_seconds": round(seconds, 3), "screenshot_pixel_std": round(float(pixels.std()), 2)}


def _save(key: str, result: dict) -> None:
    for name, value in result.items():
        print(f"{name:22s} {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    saved[key] = result
    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version_dir", nargs="?", type=Path, help="a version directory (default: latest --dataset)")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--png", type=Path, default=Path(tempfile.gettempdir()) / "report.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=9000)
    parser.add_argument("--scale", type=int, default=0, help="time the report on random tables of N samples")
    parser.add_argument("--url", help="screenshot this live page instead of a report (e.g. the Prefect UI)")
    parser.add_argument("--wait-ms", type=int, default=15000, help="virtual time a --url page's scripts get")
    args = parser.parse_args()
    if args.url:
        _save("url", shoot_url(args.url, args.png, args.width, args.height, args.wait_ms))
        return
    scratch = tempfile.TemporaryDirectory() if args.scale else None
    if scratch:
        start = time.perf_counter()
        version_dir = random_version(Path(scratch.name) / "random" / f"n{args.scale}", args.scale)
        print(f"random version of {args.scale:,} samples written in {time.perf_counter() - start:.1f} s")
    else:
        version_dir = args.version_dir or latest_version_dir(args.dataset)
    start, cpu_start = time.perf_counter(), time.process_time()
    report = build_report(version_dir)
    build_seconds, build_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    shot_seconds = screenshot(report, args.png, args.width, args.height)
    pixels = np.asarray(Image.open(args.png).convert("L"))
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, Python {platform.python_version()}",
        "load_average_1min": os.getloadavg()[0], "samples": pq.read_metadata(version_dir / "samples.parquet").num_rows,
        "version_dir": str(version_dir), "report_bytes": report.stat().st_size,
        "report_images": report.read_text().count('<img src="data:image/png;base64,'),
        "build_seconds": round(build_seconds, 3), "build_cpu_seconds": round(build_cpu, 3), "screenshot_seconds": round(shot_seconds, 3),
        "screenshot": str(args.png), "screenshot_pixel_std": round(float(pixels.std()), 2),
    }
    _save("scale" if args.scale else "version", result)
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
