"""Exact K=8 neighbours of 1M x 136-d points on a GPU (torch; faiss-gpu beside it when installed).

The project's exact search (pipeline.knn.exact_torch on CUDA: split TF32 (tf32x3) or bf16 (bf16x3)
candidate products with a proven margin, chunked top-k, float64 re-ranking) over every row of seeded clustered data
(pipeline.knn.clustered_points), checked against float64 brute force on a seeded sample of rows, the
bf16x3 run against the tf32x3 run row for row, and the candidate products' rate against the datasheet peak.
Goal (issue 20): <= 3 s for 1M x 136-d. The blocked
IVF backend on the GPU is timed beside it (approximate, recall@8 measured), and faiss-gpu's
IndexFlatL2 when the faiss build has GPU support.

    python bench/bench_gpu_knn.py                       # on a CUDA machine (1M x 136)
    .venv/bin/python bench/bench_gpu_knn.py --smoke     # CPU, 20K x 136: shows the script works

Prints a table and writes bench/results/gpu_knn.json (gpu_knn_smoke.json with --smoke).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_common import device_info, peak_text, pick_device, save, share_of_peak, sync  # noqa: E402

K = 8


def reference_check(x, indices, rows, device: str) -> float:
    """Share of sampled rows whose K neighbours equal float64 brute force's (ties by lower index)."""
    import torch

    data = torch.from_numpy(x).to(device).double()                                   # [N, D]
    same = 0
    for row in rows:
        d2 = (data - data[int(row)]).pow(2).sum(dim=1)                               # [N] float64
        d2[int(row)] = float("inf")
        same += int((torch.sort(d2, stable=True).indices[:K].cpu().numpy() == indices[row]).all())
    return same / len(rows)


def run_exact(x, device: str, precision: str = "tf32x3") -> tuple[float, object]:
    """Seconds and [N, K] neighbours of the exact search; on CUDA with `precision` candidate products."""
    from pipeline.knn import exact_knn
    from pipeline.knn.exact_torch import exact_knn_torch

    def search(data):
        if device == "cpu":
            return exact_knn(data, K, device="cpu")
        return exact_knn_torch(data, K, device=device, precision=precision)

    search(x[:4096])                                                                 # warm-up (kernels, allocator)
    sync(device)
    start = time.perf_counter()
    indices = search(x)                                                              # [N, K]
    sync(device)
    return time.perf_counter() - start, indices


def run_blocked(x, device: str) -> dict:
    from pipeline.knn import KnnConfig, build_knn_graph, recall_at_k

    use_gpu = "yes" if device.startswith("cuda") else "no"
    start = time.perf_counter()
    graph = build_knn_graph(x, KnnConfig(backend="blocked-ivf", use_gpu=use_gpu))
    seconds = time.perf_counter() - start
    return {"method": "blocked-ivf (project)", "seconds": round(seconds, 2),
            "recall_at_8": round(recall_at_k(x, graph.indices, n_queries=1000, seed=0), 5),
            "nlist": graph.params["nlist"], "nprobe": graph.params["nprobe"]}


def run_faiss(x) -> dict | None:
    try:
        import faiss
    except ImportError:
        return None
    if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        return None
    index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatL2(x.shape[1]))
    start = time.perf_counter()
    index.add(x)
    index.search(x, K + 1)
    return {"method": "faiss-gpu IndexFlatL2 (bare)", "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, 20K points")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=136)
    parser.add_argument("--check-rows", type=int, default=200)
    parser.add_argument("--no-blocked", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from pipeline.knn import clustered_points, recall_sample

    device = pick_device(args.smoke, args.device)
    n = 20_000 if args.smoke else args.n
    start = time.perf_counter()
    x = clustered_points(n, args.dim, seed=0)                                        # [N, D] float32
    data_s = time.perf_counter() - start
    info = device_info(device)
    rows = recall_sample(n, min(args.check_rows, n), seed=1)
    results, first = [], None
    for precision in (("tf32x3", "bf16x3") if device.startswith("cuda") else ("fp32",)):
        seconds, indices = run_exact(x, device, precision)
        first = indices if first is None else first
        results.append({"method": f"exact (project, torch, {precision} candidates)", "seconds": round(seconds, 2),
                        "rows_equal_float64": reference_check(x, indices, rows, device),
                        "equal_to_first": bool((indices == first).all()),
                        **share_of_peak(2.0 * n * n * args.dim * (3 if precision.endswith("x3") else 1) / seconds,
                                        info, precision.removesuffix("x3"))})
    if not args.no_blocked:
        results.append(run_blocked(x, device))
    faiss_row = run_faiss(x) if device.startswith("cuda") else None
    results.append(faiss_row or {"method": "faiss-gpu IndexFlatL2 (bare)", "seconds": None,
                                 "note": "faiss with GPU support is not installed here"})
    print(f"K={K} neighbours of {n:,} x {args.dim} points (data {data_s:.1f} s) on {info['name']}")
    print("| method | seconds | check | candidate products vs peak |\n| --- | ---: | --- | --- |")
    for r in results:
        check = (f"{r['rows_equal_float64']:.3f} of {len(rows)} rows equal float64 brute force"
                 if "rows_equal_float64" in r else f"recall@8 {r['recall_at_8']}" if "recall_at_8" in r
                 else r.get("note", ""))
        peak = peak_text(r) if "tflops" in r else ""
        print(f"| {r['method']} | {r['seconds'] if r['seconds'] is not None else 'n/a'} | {check} | {peak} |")
    save("gpu_knn", args.smoke, {"bench": "bench_gpu_knn", "goal": "exact K=8, 1M x 136-d, <= 3 s",
                                 "n": n, "dim": args.dim, "k": K, "machine": info, "results": results}, args.out)


if __name__ == "__main__":
    main()
