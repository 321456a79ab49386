"""Benchmark the K-NN graph backends at 300K points (K=8): the project's path beside the bare library call.

Every case runs in fresh Python processes (imports and JIT compilation counted as a user pays them),
`--repeats` times (default 3); the table gives medians and best-of, with the load average before each run
(the 2-core machine is shared: wall time under load overstates the cost, CPU seconds less so).

  pair        the graph stage as `make prepare` runs it: both graphs (35-d AU, 136-d landmarks) through
              pipeline.stages.graphs.build_space_graph (search + recall@8 on 2,000 exact queries), process
              start to end; the first run with an empty numba cache (one-off compilation), then warm.
  <backend>   per space, the project's build_knn_graph and the bare library call with the same parameters
              in one process (alternating), with the project's overhead over the bare call:
              blocked-ivf (bare: kmeans + nearest_cells + cell_search), faiss-ivf (bare: IndexIVFFlat
              train/add/search at the nprobe the project tuned), pynndescent (bare: NNDescent), exact.
  variants    blocked-ivf with nlist 4 sqrt(N), PCA of the 136-d space to 32/64 components, pynndescent
              with n_neighbors 12.

    .venv/bin/python bench/bench_knn.py                           # the default suite (long on 2 cores)
    .venv/bin/python bench/bench_knn.py --cases pair --repeats 3
    .venv/bin/python bench/bench_knn.py --cases blocked-ivf --n 50000 --repeats 1   # a quick look

Writes bench/results/knn.json (merged by case and N with earlier results unless --fresh).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "knn.json"
DATA = {"clusters": 64, "intrinsic_dim": 16, "noise": 0.1, "seed": 0}
SPACES = {"au": 35, "landmarks": 136}
CASES = {   # name -> (kind, KnnConfig fields, dims)
    "pair": ("pair", {}, (35, 136)),
    "blocked-ivf": ("compare", {"backend": "blocked-ivf"}, (35, 136)),
    "faiss-ivf": ("compare", {"backend": "faiss", "faiss_index": "ivf"}, (35, 136)),
    "pynndescent": ("compare", {"backend": "pynndescent"}, (35, 136)),
    "exact": ("compare", {"backend": "exact"}, (35,)),
    "blocked-ivf-4sqrt": ("project", {"backend": "blocked-ivf", "ivf_nlist": 2191}, (35, 136)),
    "blocked-ivf-pca32": ("project", {"backend": "blocked-ivf", "pca_dim": 32}, (136,)),
    "blocked-ivf-pca64": ("project", {"backend": "blocked-ivf", "pca_dim": 64}, (136,)),
    "pynndescent-nn12": ("project", {"backend": "pynndescent", "nnd_neighbors": 12}, (35, 136)),
}
DEFAULT_CASES = ["pair", "blocked-ivf", "faiss-ivf", "pynndescent", "pynndescent-nn12", "blocked-ivf-4sqrt",
                 "blocked-ivf-pca32", "blocked-ivf-pca64", "exact"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, round(time.perf_counter() - wall, 2), round(cpu_seconds() - cpu, 2)


# --- the bare library calls (same parameters as the project's path) ----------------------------

def bare_blocked(x, config, width: int, nprobe: int):
    from pipeline.knn.blocked import CELLS_PER_SQRT_N, cell_search, ivf_nlist, kmeans, nearest_cells

    nlist = ivf_nlist(len(x), config.ivf_nlist, CELLS_PER_SQRT_N)
    centroids = kmeans(x, nlist, config.ivf_kmeans_iters, config.ivf_train_per_list, config.seed, "cpu",
                       config.threads)
    probes = nearest_cells(x, centroids, nprobe, "cpu", config.threads)
    return cell_search(x, probes, nlist, width, "cpu", config.threads)[1]


def bare_faiss_ivf(x, config, width: int, nprobe: int):
    import faiss

    from pipeline.knn.blocked import ivf_nlist

    faiss.omp_set_num_threads(config.threads)
    nlist = ivf_nlist(len(x), config.ivf_nlist)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(x.shape[1]), x.shape[1], nlist)
    index.cp.seed, index.cp.niter = config.seed, config.ivf_kmeans_iters
    index.cp.max_points_per_centroid = config.ivf_train_per_list
    index.train(x)
    index.add(x)
    index.nprobe = nprobe
    return index.search(x, width)[1]


def bare_pynndescent(x, config, width: int, nprobe: int):
    from pipeline.knn.ann import import_pynndescent

    index = import_pynndescent(config.nnd_cache).NNDescent(
        x, metric="euclidean", n_neighbors=max(config.nnd_neighbors, width), random_state=config.seed,
        n_trees=config.nnd_trees, n_iters=config.nnd_iters, n_jobs=config.threads, low_memory=True)
    return index.neighbor_graph[0]


def bare_exact(x, config, width: int, nprobe: int):
    from pipeline.knn.exact import exact_knn

    return exact_knn(x, width, device="cpu", threads=config.threads)


BARE = {"blocked-ivf": bare_blocked, "faiss": bare_faiss_ivf, "pynndescent": bare_pynndescent, "exact": bare_exact}


# --- workers: one run of one case in this process ---------------------------------------------

def worker_pair(args, started: float) -> dict:
    """Both graphs through the graph stage, as the prepare runs them (timed from process start)."""
    import numpy as np

    from pipeline.knn import KnnConfig, clustered_points
    from pipeline.stages.graphs import GraphConfig, build_space_graph

    config = GraphConfig(knn=KnnConfig(threads=args.threads, **json.loads(args.extra)))
    data_started = time.perf_counter()
    data = {space: clustered_points(args.n, dim, **DATA) for space, dim in SPACES.items()}
    data_wall = time.perf_counter() - data_started           # not counted: the prepare reads tables instead
    graphs = []
    for space, x in data.items():
        (_, meta), wall, cpu = timed(lambda: build_space_graph(x, np.arange(len(x)), None, config, space))
        graphs.append({"space": space, "dim": x.shape[1], "wall_s": wall, "cpu_s": cpu,
                       "build_s": meta["build_seconds"], "recall_s": meta["recall_seconds"],
                       "recall_at_8": round(meta["recall_at_k"], 5), "backend": meta["backend"],
                       "params": {k: v for k, v in meta["backend_params"].items() if k not in DROP}})
    total = time.perf_counter() - started - data_wall
    return {"graphs": graphs, "pair_wall_s": round(total, 2), "data_wall_s": round(data_wall, 2),
            "process_cpu_s": round(cpu_seconds(), 2)}


DROP = ("k", "metric", "seed", "use_gpu", "target_recall", "tune_queries")


def worker_compare(args, kind: str, fields: dict, dims: tuple[int, ...]) -> dict:
    """Project path (and, for 'compare', the bare call with the same parameters), per space."""
    from dataclasses import replace

    import numpy as np

    from pipeline.knn import KnnConfig, build_knn_graph, clustered_points, recall_at_k

    config = KnnConfig(threads=args.threads, **{**fields, **json.loads(args.extra)})
    out = []
    for dim in dims:
        x = clustered_points(args.n, dim, **DATA)
        graph, wall, cpu = timed(lambda: build_knn_graph(x, config))
        row = {"dim": dim, "project_wall_s": wall, "project_cpu_s": cpu,
               "recall_at_8": round(recall_at_k(x, graph.indices, n_queries=2000, seed=0), 5),
               "params": {k: v for k, v in graph.params.items()}}
        if kind == "compare":
            nprobe = graph.params.get("nprobe")
            fixed = replace(graph.config, ivf_nprobe=nprobe) if nprobe else graph.config
            width = min(8 + 1 + (4 if config.backend != "exact" else -1), len(x))
            (_, bare_wall, bare_cpu) = timed(lambda: BARE[config.backend](x, fixed, width, nprobe))
            again, wall2, cpu2 = timed(lambda: build_knn_graph(x, fixed))
            row.update(bare_wall_s=bare_wall, bare_cpu_s=bare_cpu, project_fixed_wall_s=wall2,
                       project_fixed_cpu_s=cpu2, same_bytes_as_auto=bool(
                           np.array_equal(again.indices, graph.indices)))
        out.append(row)
    return {"graphs": out, "process_cpu_s": round(cpu_seconds(), 2)}


def worker(args, started: float) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    kind, fields, dims = CASES[args.worker]
    result = worker_pair(args, started) if kind == "pair" else worker_compare(args, kind, fields, dims)
    return {"case": args.worker, "n": args.n, "threads": args.threads, **result}


def repeats_for(case: str, args) -> int:
    """Medians of `--repeats` for the pair and the project-vs-bare comparisons; once for the variants, and
    for faiss IVF and exact at 300K (each run takes 15-20 minutes on 2 shared cores)."""
    if CASES[case][0] == "project" or (case in ("exact", "faiss-ivf") and args.n >= 100_000):
        return 1
    return args.repeats


# --- the driver --------------------------------------------------------------------------------

def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def run_once(case: str, args, cache: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "NUMBA_NUM_THREADS": str(args.threads),
           "FER_CACHE": str(cache), "NUMBA_CACHE_DIR": str(cache / "numba"), "PYTHONHASHSEED": "0"}
    command = [sys.executable, __file__, "--worker", case, "--n", str(args.n), "--threads", str(args.threads),
               "--extra", args.extra]
    load = os.getloadavg()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
    if done.returncode != 0:
        return {"case": case, "error": done.stderr.strip().splitlines()[-3:], "load_before": load}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "load_before": [round(v, 2) for v in load],
            "load_after": [round(v, 2) for v in os.getloadavg()]}


def summarise(case: str, runs: list[dict]) -> dict:
    """Medians and best-of over the runs that did not fail (the cold pair run is kept apart)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"case": case, "n": runs[0].get("n"), "runs": runs}
    if CASES[case][0] == "pair":
        warm = [r for r in ok if not r.get("cold")] or ok
        walls = [r["pair_wall_s"] for r in warm]
        cold = next((r["pair_wall_s"] for r in ok if r.get("cold")), None)
        return {"case": case, "n": ok[0]["n"], "median_pair_wall_s": statistics.median(walls), "best_pair_wall_s": min(walls),
                "cold_pair_wall_s": cold, "recall_at_8": {g["space"]: g["recall_at_8"] for g in ok[0]["graphs"]},
                "median_load_1min": statistics.median(r["load_before"][0] for r in ok), "runs": runs}
    per_dim = []
    for i, row in enumerate(ok[0]["graphs"]):
        rows = [r["graphs"][i] for r in ok]
        entry = {"dim": row["dim"], "recall_at_8": row["recall_at_8"]}
        for key in ("project_wall_s", "project_cpu_s", "bare_wall_s", "bare_cpu_s", "project_fixed_wall_s",
                    "project_fixed_cpu_s"):
            if key in row:
                values = [r[key] for r in rows]
                entry[f"median_{key}"], entry[f"best_{key}"] = statistics.median(values), min(values)
        if "bare_wall_s" in row:
            entry["overhead_median"] = round(entry["median_project_fixed_wall_s"] / entry["median_bare_wall_s"] - 1, 3)
            entry["overhead_best"] = round(entry["best_project_fixed_wall_s"] / entry["best_bare_wall_s"] - 1, 3)
            entry["overhead_cpu_median"] = round(
                entry["median_project_fixed_cpu_s"] / entry["median_bare_cpu_s"] - 1, 3)
        per_dim.append(entry)
    return {"case": case, "n": ok[0]["n"], "per_dim": per_dim, "median_load_1min": statistics.median(r["load_before"][0] for r in ok),
            "runs": runs}


def print_summary(summary: dict) -> None:
    case = summary["case"]
    if "per_dim" not in summary and "median_pair_wall_s" not in summary:
        print(f"{case:<20} ERROR {summary['runs'][-1].get('error')}")
        return
    load = summary["median_load_1min"]
    if "median_pair_wall_s" in summary:
        print(f"{case:<20} both graphs: median {summary['median_pair_wall_s']:.1f} s, best "
              f"{summary['best_pair_wall_s']:.1f} s, cold cache {summary['cold_pair_wall_s']} s; recall@8 "
              f"{summary['recall_at_8']}; load {load:.1f}")
        return
    for e in summary["per_dim"]:
        bare = (f"  bare {e['median_bare_wall_s']:>7.1f} (best {e['best_bare_wall_s']:.1f})  project same params "
                f"{e['median_project_fixed_wall_s']:>7.1f}  overhead {100 * e['overhead_median']:+.0f}% "
                f"(best-of {100 * e['overhead_best']:+.0f}%, CPU {100 * e['overhead_cpu_median']:+.0f}%)"
                ) if "median_bare_wall_s" in e else ""
        print(f"{case:<20}{e['dim']:>5}  project {e['median_project_wall_s']:>7.1f} s (best "
              f"{e['best_project_wall_s']:.1f}, cpu {e['median_project_cpu_s']:.1f})  recall@8 "
              f"{e['recall_at_8']:.4f}{bare}  load {load:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=DEFAULT_CASES, choices=sorted(CASES))
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra", default="{}", help="JSON of extra KnnConfig fields for every case")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--fresh", action="store_true", help="replace the JSON instead of merging by case and N")
    parser.add_argument("--resummarise", action="store_true",
                        help="recompute the summaries of the runs stored in --out, print them, save")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args, time.perf_counter())))
        return
    if args.resummarise:
        report = json.loads(args.out.read_text())
        report["results"] = [summarise(s["case"], s["runs"]) for s in report["results"]]
        for summary in report["results"]:
            print_summary(summary)
        args.out.write_text(json.dumps(report, indent=1))
        return
    started = uptime()
    summaries = []
    with tempfile.TemporaryDirectory(prefix="bench-knn-") as tmp:
        cache = Path(tmp)
        for case in args.cases:
            runs = []
            if CASES[case][0] == "pair":        # first with an empty numba cache: the one-off compile
                print(f"running {case} (cold numba cache) ...", flush=True)
                cold = Path(tmp) / "cold"
                runs.append({**run_once(case, args, cold), "cold": True})
            for i in range(repeats_for(case, args)):
                print(f"running {case} N={args.n} run {i + 1}/{repeats_for(case, args)} ...", flush=True)
                runs.append(run_once(case, args, cache))
            summaries.append(summarise(case, runs))
            print_summary(summaries[-1])
            write_report(args, started, summaries)
            args.fresh = False                 # later cases merge into what this run wrote
    print("\nsummary (medians of runs in fresh processes; load = 1-min average before each run)")
    for summary in summaries:
        print_summary(summary)


def write_report(args, started: str, summaries: list[dict]) -> None:
    """Save (merged by case and N with the file's earlier results unless --fresh)."""
    report = {"machine": machine(), "data": {"generator": "pipeline.knn.clustered_points", **DATA}, "k": 8,
              "n": args.n, "threads": args.threads, "uptime_start": started, "uptime_end": uptime(),
              "note": "2-core CPU shared with other engineers while measuring: the load average is recorded "
                      "per run; under load, wall time overstates the cost and best-of is closer to it",
              "results": summaries}
    if not args.fresh and args.out.is_file():
        previous = json.loads(args.out.read_text())
        fresh = {(s["case"], s.get("n")) for s in summaries}
        kept = [s for s in previous.get("results", []) if ("per_dim" in s or "median_pair_wall_s" in s)
                and (s["case"], s.get("n")) not in fresh]
        report["results"] = kept + summaries
        starts = _as_list(previous.get("uptime_start"))
        report["uptime_start"] = starts if started in starts else [*starts, started]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"saved {args.out}", flush=True)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value] if value else []


def machine() -> dict:
    model = ""
    if Path("/proc/cpuinfo").is_file():
        lines = [l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        model = lines[0].split(":", 1)[1].strip() if lines else ""
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(), "gpu": "none"}


if __name__ == "__main__":
    main()
