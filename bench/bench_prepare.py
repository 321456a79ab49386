"""Speed of the prepare flow: end-to-end images/s on the synthetic dataset, per stage, and an AffectNet-size estimate.

Three measurements, all with the real flow and the real pipeline stages:

1. `e2e`: `make prepare`'s flow (default config, `source.n=N`, N=2,000) on a fresh cache: synthetic image
   generation (timed on its own, before the flow), then the flow. Per-stage wall time comes from the flow's
   own task runs as the Prefect API recorded them (first start to last end of each stage's tasks); the
   time between stage tasks (assembling the parts into the version tables and the crop store, writing
   the lock) is reported as `assemble+lock`. A second run of the same config is timed as well (the no-op).
2. `scale per-image`: the same N images with detection skipped (`align.detector=prealigned`: the image
   is the face, as with given boxes), default landmarks (dlib) and AU estimates: per-image rates that are
   extrapolated linearly to `--scale-n` images: T(scale_n) = T(N) / N * scale_n (task overhead included).
3. `scale global`: the global stages measured for real at `--scale-n` (300K) rows: the KNN graphs of the
   AU space (35-d) and the landmark space (136-d) with the real backends (pynndescent, the flow's default;
   faiss IVF with --backends), plus measured recall@K, through pipeline.stages.graphs.build_and_write_space; the default
   noisy-label variant set (31 variants) through pipeline.stages.noise.write_variant_set. The features are
   synthetic-shaped: per-class Gaussians (mean, full covariance) fitted to the landmark and AU tables
   that run 2 produced; splits follow AffectNet's proportions (98.6% train), so a graph has ~296K rows.

The report stage is measured at N only (its plots sample the data; at 300K it also needs the 59 GB
crop store this machine does not have room for).

    .venv/bin/python bench/bench_prepare.py                  # N=2,000, scale 300K, pynndescent (~15 min here)
    .venv/bin/python bench/bench_prepare.py --backends pynndescent,faiss-ivf   # + faiss IVF graphs (~18 min)
    .venv/bin/python bench/bench_prepare.py --n 500          # when the machine is too loaded
    .venv/bin/python bench/bench_prepare.py --n 60 --scale-n 20000 --out /tmp/quick.json   # smoke run

Writes bench/results/bench_prepare.json. The machine is shared (2 cores, other engineers' jobs): the
load average is recorded at the start and end of every phase; wall times under load overstate the cost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results" / "bench_prepare.json"
AFFECTNET_TRAIN_SHARE = 287_651 / (287_651 + 4_000)       # AffectNet manually annotated: train / validation
PER_IMAGE_STAGES = ("faces", "landmarks", "action_units")
STAGE_OF_TASK = {"sources": "sources", "faces-shard": "faces", "landmarks-shard": "landmarks",
                 "action-units-shard": "action_units", "graph": "graphs", "noise": "noise", "report": "report"}
KNN_BACKENDS = {"pynndescent": {"backend": "pynndescent"}, "faiss-ivf": {"backend": "faiss", "faiss_index": "ivf"}}


def isolate(work: Path) -> None:
    """Every artefact, cache, lock and the temporary Prefect database under `work`."""
    for key, sub in (("FER_ARTIFACTS", "artifacts"), ("FER_MANIFESTS", "manifests"), ("FER_CACHE", "cache"),
                     ("PREFECT_HOME", "prefect-home")):
        os.environ[key] = str(work / sub)
    os.environ.pop("PREFECT_API_URL", None)          # the flow starts its own temporary API
    os.environ.pop("FER_DATA_ROOT", None)
    from flows.runtime import configure_prefect

    configure_prefect(results_dir=work / "prefect-results")


def start_prefect_api() -> float:
    """Start the temporary Prefect API now, so its start-up is not charged to the first flow run."""
    from prefect.client.orchestration import get_client

    start = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.api_healthcheck()
    return time.perf_counter() - start


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- phase 1 and 2: the flow on N synthetic images -------------------------------------------------

def generate_images(n: int) -> dict:
    """Generate the N synthetic images into the (fresh) cache, as the sources task would."""
    from pipeline.sources import default_work_dir
    from pipeline.sources.synthetic import ensure_generated, synthetic_config
    from pipeline.specs import load_spec

    start = time.perf_counter()
    ensure_generated(synthetic_config(load_spec("synthetic"), {"n": n}), default_work_dir("synthetic"))
    return {"seconds": time.perf_counter() - start, "images": n}


def stage_spans(flow_run_id) -> dict[str, dict]:
    """Per stage: wall span (first task start to last task end), summed task seconds and task count."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    runs, page = [], 200                     # the API serves at most 200 rows per request
    with get_client(sync_client=True) as client:
        while True:
            batch = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                          sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=page, offset=len(runs))
            runs += batch
            if len(batch) < page:
                break
    spans: dict[str, dict] = {}
    for run in runs:
        stage = STAGE_OF_TASK.get(run.name.rsplit("-", 1)[0])
        if stage is None or run.start_time is None or run.end_time is None:
            continue
        span = spans.setdefault(stage, {"start": run.start_time, "end": run.end_time, "task_seconds": 0.0,
                                        "tasks": 0})
        span["start"], span["end"] = min(span["start"], run.start_time), max(span["end"], run.end_time)
        span["task_seconds"] += (run.end_time - run.start_time).total_seconds()
        span["tasks"] += 1
    return {stage: {"seconds": (s["end"] - s["start"]).total_seconds(), "task_seconds": s["task_seconds"],
                    "tasks": s["tasks"]} for stage, s in spans.items()}


def run_flow(overrides: list[str]) -> dict:
    """One prepare flow run in this process; wall time, the flow's summary and per-stage spans."""
    from flows.prepare import prepare_flow
    from flows.runtime import make_task_runner
    from pipeline.config import load_prepare_config

    config = load_prepare_config(None, overrides, dataset="synthetic")
    flow = prepare_flow.with_options(task_runner=make_task_runner(config.max_workers))
    load_before, start = load(), time.perf_counter()
    state = flow(config, return_state=True)
    seconds = time.perf_counter() - start
    summary = state.result()
    spans = stage_spans(state.state_details.flow_run_id)
    flow_seconds = summary.get("seconds", {})
    inside = sum(spans.get(s, {}).get("seconds", 0.0) for s in PER_IMAGE_STAGES)
    if all(s in flow_seconds for s in PER_IMAGE_STAGES):       # each stage's seconds: its shards and assembly
        spans["assemble"] = {"seconds": max(0.0, sum(flow_seconds[s] for s in PER_IMAGE_STAGES) - inside)}
    return {"overrides": overrides, "wall_seconds": seconds, "version": summary["version"],
            "computed": summary.get("computed"), "flow_seconds": flow_seconds, "stages": spans,
            "reused": bool(summary.get("reused")), "load_before": load_before, "load_after": load(),
            "path": summary["path"]}


# --- phase 3: global stages at scale -----------------------------------------------------------------

def fitted_sampler(features, labels, rng):
    """Per-class Gaussian (mean, covariance + small ridge) fitted to `features` [N, D]: returns sample(labels)."""
    import numpy as np

    params = {}
    for c in np.unique(labels):
        rows = features[labels == c].astype(np.float64)                               # [Nc, D]
        cov = np.cov(rows, rowvar=False) + 1e-6 * np.eye(rows.shape[1])                # [D, D]
        params[int(c)] = (rows.mean(0), np.linalg.cholesky(cov))

    def sample(target_labels):
        out = np.empty((len(target_labels), features.shape[1]), dtype=np.float32)     # [M, D]
        for c, (mean, chol) in params.items():
            where = np.flatnonzero(target_labels == c)
            out[where] = mean + rng.standard_normal((len(where), len(mean))) @ chol.T
        return out

    return sample


def scale_version(source_dir: Path, out: Path, n: int, seed: int = 0) -> dict:
    """Write samples/landmarks/action_units tables of `n` synthetic-shaped rows into `out`."""
    import numpy as np
    import pyarrow as pa

    from pipeline.contract.tables import read_table, vectors_to_arrow, vectors_to_numpy, write_table

    rng = np.random.default_rng(seed)
    samples = read_table(source_dir / "samples.parquet", columns=["sample_id", "label"])
    label_of = dict(zip(samples.column("sample_id").to_pylist(), samples.column("label").to_pylist()))
    class_share = np.bincount(samples.column("label").to_numpy(), minlength=7) / samples.num_rows
    labels = rng.choice(len(class_share), size=n, p=class_share).astype(np.int8)      # [n]
    split = np.where(rng.random(n) < AFFECTNET_TRAIN_SHARE, "train", "validation")
    ids = np.arange(n, dtype=np.int64)
    write_table(out / "samples.parquet", pa.table({"sample_id": ids, "split": split, "label": labels}),
                {"dataset": "synthetic-scale", "classes": None})
    landmarks = read_table(source_dir / "landmarks.parquet", columns=["sample_id", "points"])
    points = vectors_to_numpy(landmarks.column("points"))                             # [N, 136]
    point_labels = np.array([label_of[i] for i in landmarks.column("sample_id").to_pylist()])
    new_points = fitted_sampler(points, point_labels, rng)(labels)                    # [n, 136]
    write_table(out / "landmarks.parquet", pa.table({"sample_id": ids, "points": vectors_to_arrow(new_points)}))
    aus = read_table(source_dir / "action_units.parquet", columns=["sample_id", "intensity", "presence"])
    au = np.concatenate([vectors_to_numpy(aus.column("intensity")), vectors_to_numpy(aus.column("presence"))], 1)
    au_labels = np.array([label_of[i] for i in aus.column("sample_id").to_pylist()])
    new_au = fitted_sampler(au, au_labels, rng)(labels)                               # [n, 35]
    intensity = np.clip(new_au[:, :17], 0.0, 5.0)                                     # [n, 17]
    presence = (new_au[:, 17:] >= 0.5).astype(np.float32)                             # [n, 18]
    write_table(out / "action_units.parquet", pa.table({
        "sample_id": ids, "intensity": vectors_to_arrow(intensity), "presence": vectors_to_arrow(presence)}))
    return {"rows": n, "train_rows": int((split == "train").sum()), "landmark_dim": int(points.shape[1]),
            "au_dim": int(au.shape[1]), "fitted_on_rows": int(len(points))}


def scale_globals(version_dir: Path, backends: list[str], threads: int) -> dict:
    """Graphs (per backend, per space) and the default noise variant set at full scale, timed."""
    from dataclasses import replace

    from pipeline.contract.tables import LABELS_DIR, read_table
    from pipeline.stages.graphs import GraphConfig, build_and_write_space
    from pipeline.stages.noise import NoiseConfig, variant_names, write_variant_set

    results = {"graphs": [], "load_before": load()}
    for label in backends:
        config = GraphConfig()
        config = replace(config, knn=replace(config.knn, threads=threads, **KNN_BACKENDS[label]))
        for space in ("au", "landmarks"):
            start = time.perf_counter()
            _, meta = build_and_write_space(version_dir, space, config)
            results["graphs"].append({
                "backend": label, "space": space, "rows": meta["n_rows"], "dim": meta["feature_dim"],
                "k": meta["K"], "seconds": time.perf_counter() - start, "build_seconds": meta["build_seconds"],
                "recall_at_k": meta["recall_at_k"], "load_after": load()})
            print(f"  graph {label:<12} {space:<10} {meta['n_rows']:>7} rows {time.perf_counter() - start:7.1f} s "
                  f"recall@{meta['K']} {meta['recall_at_k']:.4f}", flush=True)
    samples = read_table(version_dir / "samples.parquet", columns=["sample_id", "split", "label"])
    names = variant_names(NoiseConfig())
    start = time.perf_counter()
    write_variant_set(version_dir / LABELS_DIR, samples, names, 7)
    results["noise"] = {"variants": len(names), "rows": samples.num_rows, "seconds": time.perf_counter() - start}
    results["load_after"] = load()
    return results


# --- the table -----------------------------------------------------------------------------------------

def e2e_rows(run: dict, generation: dict | None, n: int,
             first_in_process: bool = False) -> list[tuple[str, float, str]]:
    rows = []
    if generation:
        rows.append(("generate (synthetic)", generation["seconds"], f"{n / generation['seconds']:.1f} img/s"))
    for stage in ("sources", "faces", "landmarks", "action_units", "assemble", "graphs", "noise", "report"):
        span = run["stages"].get(stage)
        if span:
            rate = f"{n / span['seconds']:.1f} img/s" if stage in (*PER_IMAGE_STAGES, "sources") else ""
            if stage == "graphs" and first_in_process:
                rate = "incl. pynndescent's numba JIT (once per process)"
            rows.append((stage, span["seconds"], rate))
    return rows


def print_table(title: str, rows: list[tuple[str, float, str]]) -> None:
    print(f"\n{title}\n  {'stage':<24} {'seconds':>9}  rate")
    for name, seconds, rate in rows:
        print(f"  {name:<24} {seconds:>9.1f}  {rate}")


def estimate(scale_run: dict, n: int, globals_: dict, scale_n: int, report_s: float, jit_s: float) -> dict:
    """AffectNet-size prepare: per-image stages extrapolated linearly, global stages as measured.

    `jit_s`: pynndescent's numba compilation, paid once per flow process (the e2e run's graph stage,
    where the graphs themselves are tiny); the scale run's process had paid it already.
    """
    per_image = {s: scale_run["stages"][s]["seconds"] / n * scale_n
                 for s in ("sources", *PER_IMAGE_STAGES, "assemble") if s in scale_run["stages"]}
    by_backend = {}
    for label in sorted({g["backend"] for g in globals_["graphs"]}):
        graphs = sum(g["seconds"] for g in globals_["graphs"] if g["backend"] == label)
        graphs += jit_s if label == "pynndescent" else 0.0
        total = sum(per_image.values()) + graphs + globals_["noise"]["seconds"] + report_s
        by_backend[label] = {"graphs_seconds": graphs, "total_seconds": total, "total_hours": total / 3600}
    return {"scale_n": scale_n, "measured_n": n, "formula": "T_stage(scale_n) = T_stage(measured_n) / measured_n"
            " * scale_n for sources (scan + hash), faces (prealigned), landmarks (dlib), action units "
            "(estimate) and assembly; graphs (au + landmarks) and noise (31 variants) measured at scale_n, "
            "+ pynndescent's one-off numba JIT as measured in the e2e run; report as measured at measured_n",
            "per_image_seconds": per_image, "noise_seconds": globals_["noise"]["seconds"],
            "report_seconds": report_s, "pynndescent_jit_seconds": jit_s, "by_knn_backend": by_backend}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="synthetic images of the end-to-end run")
    parser.add_argument("--scale-n", type=int, default=300_000, help="rows of the global-stage scale run")
    parser.add_argument("--backends", default="pynndescent",
                        help=f"KNN backends of the 300K graphs, of {sorted(KNN_BACKENDS)} (faiss-ivf adds ~7 min here)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-scale", action="store_true", help="only the end-to-end run")
    parser.add_argument("--work-dir", type=Path, help="keep everything here (default: a temp dir, removed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    isolate(work)
    bench_start, load_start = time.perf_counter(), load()
    result = {"machine": f"{platform.machine()} {os.cpu_count()}-core CPU (shared with other engineers), "
                         f"Python {platform.python_version()}, torch {torch.__version__}, no GPU",
              "load_average_1_5_15_at_start": load_start, "n": args.n,
              "command": " ".join(["bench/bench_prepare.py", *(argv if argv is not None else sys.argv[1:])]),
              "backends": args.backends.split(",")}
    try:
        base = [f"source.n={args.n}"]
        result["prefect_api_start_seconds"] = start_prefect_api()
        print(f"generating {args.n} synthetic images (load {load_start})", flush=True)
        generation = generate_images(args.n)
        print("prepare flow, default config", flush=True)
        e2e = run_flow(base)
        noop = run_flow(base)
        flow_images_s = args.n / e2e["wall_seconds"]
        result["e2e"] = {"generation": generation, "run": e2e, "noop_rerun": noop,
                         "images_per_s_flow": flow_images_s,
                         "images_per_s_incl_generation": args.n / (e2e["wall_seconds"] + generation["seconds"])}
        print_table(f"end to end, N={args.n}: flow {e2e['wall_seconds']:.1f} s = {flow_images_s:.2f} img/s "
                    f"(+ generation {generation['seconds']:.1f} s); no-op rerun {noop['wall_seconds']:.1f} s",
                    e2e_rows(e2e, generation, args.n, first_in_process=True))
        if not args.skip_scale:
            print("\nper-image stages with detection skipped (align.detector=prealigned)", flush=True)
            skipped = run_flow([*base, "align.detector=prealigned"])
            print_table(f"detection skipped, N={args.n}: flow {skipped['wall_seconds']:.1f} s",
                        e2e_rows(skipped, None, args.n))
            scale_dir = work / "scale" / "version"
            print(f"\nglobal stages at {args.scale_n} rows", flush=True)
            shape = scale_version(Path(skipped["path"]), scale_dir, args.scale_n)
            globals_ = scale_globals(scale_dir, args.backends.split(","), args.threads)
            globals_["features"] = shape
            print(f"  noise: {globals_['noise']['variants']} variants x {globals_['noise']['rows']} rows "
                  f"{globals_['noise']['seconds']:.1f} s")
            report_s = e2e["stages"].get("report", {}).get("seconds", 0.0)
            jit_s = e2e["stages"].get("graphs", {}).get("seconds", 0.0)
            result["scale"] = {"detection_skipped_run": skipped, "global": globals_,
                               "estimate": estimate(skipped, args.n, globals_, args.scale_n, report_s, jit_s)}
            print(f"\nAffectNet-size prepare ({args.scale_n} images, detection skipped), per-image stages "
                  f"extrapolated from N={args.n}:")
            for stage, seconds in result["scale"]["estimate"]["per_image_seconds"].items():
                print(f"  {stage:<24} {seconds / 60:>9.1f} min")
            for label, row in result["scale"]["estimate"]["by_knn_backend"].items():
                print(f"  total with {label:<13} {row['total_hours']:>9.2f} h (graphs {row['graphs_seconds']:.0f} s)")
    finally:
        result["bench_seconds"] = time.perf_counter() - bench_start
        result["load_average_1_5_15_at_end"] = load()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nbench took {result['bench_seconds'] / 60:.1f} min; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
