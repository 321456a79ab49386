"""Benchmark K-NN graph backends on seeded clustered data: wall time (incl. imports and numba JIT), recall@K.

Each case runs in a fresh Python process, so pynndescent's numba JIT is paid and counted as a user pays
it; the "pair" cases build the 35-d and the 136-d graph in one process (the prepare flow's situation,
JIT paid once). CPU seconds are recorded next to wall seconds because the 2-core machine is shared:
wall time under contention overstates the cost, CPU time / threads is the uncontended floor.

    .venv/bin/python bench/bench_knn.py                      # 300K cases, every backend
    .venv/bin/python bench/bench_knn.py --with-1m            # + 1M points (long on 2 cores)
    .venv/bin/python bench/bench_knn.py --cases faiss-ivf:35 --n 50000   # one quick case

Writes bench/results/knn.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results" / "knn.json"
DATA = {"clusters": 64, "intrinsic_dim": 16, "noise": 0.1, "seed": 0}
# backend label -> KnnConfig fields
BACKENDS = {
    "pynndescent": {"backend": "pynndescent"},
    "faiss-ivf": {"backend": "faiss", "faiss_index": "ivf"},
    "faiss-hnsw": {"backend": "faiss", "faiss_index": "hnsw"},
    "exact": {"backend": "exact"},
}
DEFAULT_CASES = [f"{b}:{d}" for b in ("pynndescent", "faiss-ivf", "faiss-hnsw", "exact") for d in (35, 136)]
PAIR_CASES = ["pynndescent:35+136", "faiss-ivf:35+136"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(case: str, n: int, threads: int, queries: int, extra: dict) -> dict:
    """Run one case in this process and return its measurements."""
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from pipeline.knn import KnnConfig, build_knn_graph, clustered_points, recall_at_k

    label, dims = case.split(":")
    config = KnnConfig(threads=threads, **{**BACKENDS[label], **extra})
    out = {"case": case, "n": n, "threads": threads, "config": {**BACKENDS[label], **extra},
           "graphs": [], "load_before": os.getloadavg()}
    for dim in (int(d) for d in dims.split("+")):
        x = clustered_points(n, dim, **DATA)
        t_wall, t_cpu = time.perf_counter(), cpu_seconds()
        graph = build_knn_graph(x, config)
        build_wall, build_cpu = time.perf_counter() - t_wall, cpu_seconds() - t_cpu
        t_wall = time.perf_counter()
        recall = recall_at_k(x, graph.indices, n_queries=queries, seed=1)
        out["graphs"].append({
            "dim": dim, "build_wall_s": round(build_wall, 2), "build_cpu_s": round(build_cpu, 2),
            "recall_at_8": round(recall, 5), "recall_wall_s": round(time.perf_counter() - t_wall, 2),
            "params": graph.params, "self_in_graph": bool((graph.indices == np.arange(n)[:, None]).any()),
        })
    out["process_wall_s"] = round(time.perf_counter() - start_wall, 2)
    out["process_cpu_s"] = round(cpu_seconds() - start_cpu, 2)
    out["build_wall_total_s"] = round(sum(g["build_wall_s"] for g in out["graphs"]), 2)
    out["load_after"] = os.getloadavg()
    return out


def loader_timing(n: int = 300_000, k: int = 8) -> dict:
    """Write a 300K x 8 graph with the graph writer and time read_graph without distances (first and best of 5)."""
    import tempfile

    import numpy as np
    import torch  # (imported before timing: the trainer has torch loaded already)

    from pipeline.contract.graphs import graph_table, read_graph, write_graph

    rng = np.random.default_rng(0)
    table = graph_table(np.arange(n), rng.integers(0, n, (n, k)), rng.random((n, k), np.float32),
                                  rng.random((n, k), np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_graph(Path(tmp) / "g.parquet", table, {"space": "bench"})
        times = []
        for _ in range(5):
            start = time.perf_counter()
            graph = read_graph(path, with_distances=False)
            neighbors, similarity = torch.from_numpy(graph.neighbors), torch.from_numpy(graph.similarity)
            times.append(time.perf_counter() - start)
        size = path.stat().st_size
    return {"rows": n, "k": k, "first_s": round(times[0], 4), "best_s": round(min(times), 4),
            "file_mb": round(size / 2**20, 1), "dtypes": [str(neighbors.dtype), str(similarity.dtype)],
            "load_avg": os.getloadavg()}


def run_case(case: str, args: argparse.Namespace, n: int) -> dict:
    """Run a case in a fresh process (so JIT and imports are counted) and parse its JSON line."""
    command = [sys.executable, __file__, "--worker", case, "--n", str(n), "--threads", str(args.threads),
               "--queries", str(args.queries), "--extra", args.extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "NUMBA_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        return {"case": case, "n": n, "error": done.stderr.strip().splitlines()[-3:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["subprocess_wall_s"] = round(time.perf_counter() - start, 2)
    return result


def machine() -> dict:
    model = ""
    if Path("/proc/cpuinfo").is_file():
        lines = [l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        model = lines[0].split(":", 1)[1].strip() if lines else ""
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "gpu": "none"}


def print_table(results: list[dict]) -> None:
    print(f"{'case':<22}{'N':>9}{'dim':>5}{'build wall s':>14}{'build cpu s':>13}{'recall@8':>10}"
          f"{'process wall s':>16}{'load':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['case']:<22}{r['n']:>9}  ERROR {r['error']}")
            continue
        for g in r["graphs"]:
            print(f"{r['case']:<22}{r['n']:>9}{g['dim']:>5}{g['build_wall_s']:>14.1f}{g['build_cpu_s']:>13.1f}"
                  f"{g['recall_at_8']:>10.4f}{r['process_wall_s']:>16.1f}{r['load_before'][0]:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", help=f"backend:dims cases; default {DEFAULT_CASES + PAIR_CASES}")
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--with-1m", action="store_true", help="also run every approximate backend at N=1M")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--extra", default="{}", help="JSON of extra KnnConfig fields for every case")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true",
                        help="add these results to the existing JSON (replacing the same case and N)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.threads, args.queries, json.loads(args.extra))))
        return
    plan = [(case, args.n) for case in (args.cases or DEFAULT_CASES + PAIR_CASES)]
    if args.with_1m:
        plan += [(f"{b}:{d}", 1_000_000) for b in ("pynndescent", "faiss-ivf") for d in (35, 136)]
    results = []
    for case, n in plan:
        print(f"running {case} N={n} ...", flush=True)
        results.append(run_case(case, args, n))
        print_table(results[-1:])
    loader = loader_timing()
    print_table(results)
    print(f"graph load 300K x 8: first {loader['first_s']} s, best {loader['best_s']} s")
    report = {"machine": machine(), "data": {"generator": "pipeline.knn.clustered_points", **DATA},
              "k": 8, "recall_queries": args.queries, "note": "2-core CPU shared with other engineers while "
              "measuring; load averages are recorded per case", "results": results, "loader": loader}
    if args.merge and args.out.is_file():
        previous = json.loads(args.out.read_text())
        fresh = {(r["case"], r["n"]) for r in results}
        report["results"] = [r for r in previous["results"] if (r["case"], r["n"]) not in fresh] + results
        report["runs"] = previous.get("runs", 1) + 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
