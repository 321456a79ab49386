"""Per-image stages on this machine's CPU: a per-stage table, mappers, model sharing, reduced JPEG decoding.

Inputs: --n synthetic faces rendered at 500x500 and saved as JPEG (quality 90), faces filling about half the
frame like AffectNet's; AffectNet-style given boxes and 68 points come from the generator's true points.
Every figure is the median of --repeat runs; `uptime`'s load averages are recorded before and after: the
machine is shared by several sessions, so absolute figures move with their load.

Sections of the output (printed as tables, saved to bench/results/bench_face_stages.json):
- stages: faces (given boxes | dlib HOG) + dlib landmarks + AU estimates, run serially shard by shard:
  images/s of decode, align (+ detection), landmarks and AUs alone, and each one's share of the time;
- mappers: the same chain per shard (no store) over 1 worker, 2 threads and 2 spawned processes (one
  thread each, as pipeline.mappers's workers);
- pipeline: the prepare's own work units (faces -> landmarks -> AUs, each shard's part written to and read
  from the part store, as pipeline.prepare.run_stage runs them) with the serial, threads and processes
  mappers: the images/s a prepare's per-image stages reach, store I/O included;
- decoders: JPEG decode CPU ms/image by Pillow (the project's reader) and OpenCV, full and 1/2 reduced,
  and whether OpenCV's full decode gives the same pixels;
- gil: whether dlib's HOG, its shape predictor and JPEG decoding release the GIL (pipeline.models.sharing);
- sharing: faces+landmarks over 2 threads with dlib models shared unsafely (what main did), every model
  behind one lock, every model pooled, and the kept default (HOG pooled, predictor locked), and whether
  boxes change;
- reduced decode: full vs DCT-reduced JPEG decoding of the same images (the 500 px set forced to 1/2,
  and the same faces as 1000 px JPEGs under the stage's own rule): decode CPU time and the change in crops
  (mean abs grey levels), dlib landmarks (px in the 256 crop) and AU estimates (0-5 scale);
- hrnet: HRNetV2-W18 fp32 on CPU with random weights (same cost as a checkpoint), CUDA bf16 when present.

    .venv/bin/python bench/bench_face_stages.py            # ~4 min on 2 free cores, much longer under load
    .venv/bin/python bench/bench_face_stages.py --quick    # a smoke run
    .venv/bin/python bench/bench_face_stages.py --sections stages,pipeline   # only these; others kept in the JSON

Also writes bench/results/bench_face_stages.md (the per-stage and mapper tables).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import geometry
from pipeline import images
from pipeline.contract.tables import vectors_to_arrow, vectors_to_numpy
from pipeline.models import dlib_models, sharing
from pipeline.stages import action_units, faces, landmarks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # run as a script: `bench` from the project
from bench.face_stages_pipeline import decoders, pipeline_rates, write_markdown

RESULTS = Path(__file__).parent / "results" / "bench_face_stages.json"
SHARD = 50


def _cache_dir() -> Path:
    return Path(os.environ.get("FER_CACHE", Path.home() / ".cache" / "fer")) / "bench_face_stages"


def make_inputs(n: int) -> tuple[Path, pa.Table]:
    """n synthetic 500x500 JPEGs (cached) and a samples table with given boxes and 68 points."""
    from PIL import Image

    from pipeline.sources.synthetic import box_from_landmarks
    from pipeline.synthetic import generator as synthetic

    root = _cache_dir() / f"affectnet-like-500-n{n}"
    root.mkdir(parents=True, exist_ok=True)
    config = synthetic.SyntheticConfig(n=n, size=500, seed=7, min_eye_distance=0.30, max_eye_distance=0.40)
    points_file = root / "points.npy"
    if not points_file.is_file():
        points = []
        for i in range(n):
            sample = synthetic.generate_sample(config, i)
            Image.fromarray(sample.image).save(root / f"{i:05d}.jpg", quality=90)
            points.append(sample.landmarks)
        np.save(points_file, np.stack(points))
    points = np.load(points_file)                                              # [N, 68, 2]
    boxes = np.stack([box_from_landmarks(p) for p in points])                  # [N, 4]
    table = pa.table({"sample_id": pa.array(np.arange(n), pa.int64()), "relpath": [f"{i:05d}.jpg" for i in range(n)],
                      "given_bbox": vectors_to_arrow(boxes.astype(np.float32)),
                      "given_landmarks": vectors_to_arrow(points.reshape(n, -1).astype(np.float32))})
    return root, table


def chain(shard: pa.Table, root: Path, align_config: faces.AlignConfig) -> dict[str, float]:
    """faces -> dlib landmarks -> AU estimates on one shard: wall seconds per stage, and this process's CPU."""
    lm_config, au_config = landmarks.LandmarkConfig(), action_units.AUConfig()
    cpu, start = time.process_time(), time.perf_counter()
    table, crops, _ = faces.detect_align_shard(shard, root, align_config, progress=False)
    t_faces, c_faces = time.perf_counter(), time.process_time()
    ids = table.column("sample_id").to_numpy()
    usable = np.isin(table.column("status").to_numpy(zero_copy_only=False), faces.USABLE_STATUSES)
    if not usable.all():
        crops, ids = crops[usable], ids[usable]
    lm, _ = landmarks.landmarks_shard(crops, ids, lm_config, progress=False)
    t_lm, c_lm = time.perf_counter(), time.process_time()
    points = landmarks.points_from_table(lm)
    action_units.action_units_shard(None, lm.column("sample_id").to_numpy(), points, au_config)
    t_au, c_au = time.perf_counter(), time.process_time()
    return {"faces": t_faces - start, "landmarks": t_lm - t_faces, "action_units": t_au - t_lm,
            "cpu_faces": c_faces - cpu, "cpu_landmarks": c_lm - c_faces, "cpu_action_units": c_au - c_lm,
            "cpu": c_au - cpu}


def _warm(align_config: faces.AlignConfig) -> None:
    faces.check_backend(align_config)
    landmarks.check_backend(landmarks.LandmarkConfig())
    action_units.check_backend(action_units.AUConfig())


def _decode_seconds(root: Path, relpaths: list[str], reduce: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds to decode every image."""
    cpu, start = time.process_time(), time.perf_counter()
    for relpath in relpaths:
        with images.OpenImage(root / relpath) as handle:
            handle.rgb(reduce)
    return time.perf_counter() - start, time.process_time() - cpu


def _shards(table: pa.Table) -> list[pa.Table]:
    return [table.slice(s, SHARD) for s in range(0, table.num_rows, SHARD)]


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def stage_table(root: Path, table: pa.Table, align_config: faces.AlignConfig, repeat: int) -> dict:
    """Serial per-stage images/s (wall and per CPU-second) and share of the time (decode split out of faces)."""
    _warm(align_config)
    relpaths = table.column("relpath").to_pylist()
    align_name = "align" if align_config.detector == "given" else "detect+align"
    runs = []
    for _ in range(repeat):
        totals: dict[str, float] = {}
        for shard in _shards(table):
            for key, value in chain(shard, root, align_config).items():
                totals[key] = totals.get(key, 0.0) + value
        decode, decode_cpu = _decode_seconds(root, relpaths)
        runs.append({"decode": (decode, decode_cpu),
                     align_name: (totals["faces"] - decode, totals["cpu_faces"] - decode_cpu),
                     "landmarks": (totals["landmarks"], totals["cpu_landmarks"]),
                     "action_units": (totals["action_units"], totals["cpu_action_units"]),
                     "total": (totals["faces"] + totals["landmarks"] + totals["action_units"], totals["cpu"])})
    n = table.num_rows
    out = {}
    for name in runs[0]:
        wall, cpu = _median([r[name][0] for r in runs]), _median([r[name][1] for r in runs])
        total = _median([r["total"][0] for r in runs])
        out[name] = {"images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / max(cpu, 1e-9), 1),
                     "share": round(wall / total, 3)}
    return out


def _process_init(align_config: faces.AlignConfig) -> None:
    from pipeline.mappers import limit_threads

    limit_threads()
    _warm(align_config)


def _chain_args(args: tuple) -> dict[str, float]:
    return chain(*args)


def mapper_rates(root: Path, table: pa.Table, align_config: faces.AlignConfig, repeat: int) -> dict:
    """The chain per shard over 1 worker, 2 threads and 2 spawned processes: images/s (wall, median) and
    images per CPU-second of the workers (what 2 free cores could give at most: 2 x that)."""
    shards, n = _shards(table), table.num_rows
    jobs = [(shard, root, align_config) for shard in shards]
    out = {}
    _warm(align_config)
    for name in ("serial", "threads-2", "processes-2"):
        if name == "processes-2":
            context = multiprocessing.get_context("spawn")
            executor = ProcessPoolExecutor(2, mp_context=context, initializer=_process_init, initargs=(align_config,))
        else:
            executor = ThreadPoolExecutor(1 if name == "serial" else 2)
        rates, cpu_rates = [], []
        with executor:
            list(executor.map(_chain_args, jobs[:2]))                     # workers up and warm
            for _ in range(repeat):
                cpu, start = time.process_time(), time.perf_counter()
                parts = list(executor.map(_chain_args, jobs))
                rates.append(n / (time.perf_counter() - start))
                used = sum(p["cpu"] for p in parts) if name == "processes-2" else time.process_time() - cpu
                cpu_rates.append(n / used)
        out[name] = {"images_per_s": round(_median(rates), 1), "images_per_cpu_s": round(_median(cpu_rates), 1)}
    return out


@contextlib.contextmanager
def _unsafe_shared_models():
    """What main did: one cached detector and predictor shared by every thread, no lock (the race)."""
    shared_hog, shared_predictor = dlib_models._new_hog_detector(), dlib_models._new_shape_predictor()

    class Shared:
        def __init__(self, model):
            self.model = model

        @contextlib.contextmanager
        def borrow(self):
            yield self.model

        def warm(self):
            pass

    saved = dlib_models.HOG_DETECTORS, dlib_models.SHAPE_PREDICTORS
    dlib_models.HOG_DETECTORS, dlib_models.SHAPE_PREDICTORS = Shared(shared_hog), Shared(shared_predictor)
    try:
        yield
    finally:
        dlib_models.HOG_DETECTORS, dlib_models.SHAPE_PREDICTORS = saved


def _faces_landmarks(shard: pa.Table, root: Path, align_config: faces.AlignConfig) -> np.ndarray:
    table, crops, _ = faces.detect_align_shard(shard, root, align_config, progress=False)
    usable = np.isin(table.column("status").to_numpy(zero_copy_only=False), faces.USABLE_STATUSES)
    landmarks.landmarks_shard(crops[usable], table.column("sample_id").to_numpy()[usable],
                              landmarks.LandmarkConfig(), progress=False)
    return vectors_to_numpy(table.column("bbox"))


def sharing_rates(root: Path, table: pa.Table, align_config: faces.AlignConfig, repeat: int) -> dict:
    """faces+landmarks over 2 threads: unsafe shared models vs one lock vs a pool; boxes vs a serial run."""
    shards = [table.slice(s, 10) for s in range(0, table.num_rows, 10)]
    reference = np.concatenate([_faces_landmarks(s, root, align_config) for s in shards])
    out = {}
    for name in ("unsafe-shared (main before)", "lock", "pool", "default"):
        sharing.set_mode("pool" if name.startswith("unsafe") else name)
        guard = _unsafe_shared_models() if name.startswith("unsafe") else contextlib.nullcontext()
        rates, cpu_rates, changed = [], [], 0
        with guard, ThreadPoolExecutor(2) as executor:
            list(executor.map(lambda s: _faces_landmarks(s, root, align_config), shards[:2]))    # models built
            for _ in range(repeat):
                cpu, start = time.process_time(), time.perf_counter()
                boxes = np.concatenate(list(executor.map(lambda s: _faces_landmarks(s, root, align_config), shards)))
                rates.append(table.num_rows / (time.perf_counter() - start))
                cpu_rates.append(table.num_rows / (time.process_time() - cpu))
                changed = max(changed, int((~np.isclose(boxes, reference, equal_nan=True)).any(axis=1).sum()))
        out[name] = {"images_per_s": round(_median(rates), 1), "images_per_cpu_s": round(_median(cpu_rates), 1),
                     "boxes_changed_vs_serial": changed}
    sharing.set_mode("default")
    return out


def gil_release(root: Path, relpath: str) -> dict:
    """Does a call release the GIL? A worker thread runs it while the main thread wakes every 0.5 ms: the
    longest wait of the main thread stays near scheduling noise when the call releases the GIL, and grows
    to whole calls when it holds it (pure-Python sorting shown as the holding reference)."""
    import threading

    image = images.read_rgb(root / relpath)
    big = np.ascontiguousarray(np.tile(image, (2, 2, 1)))                    # one long call
    rect = dlib_models.rectangle(np.array([100, 100, 300, 300]))
    calls = {"dlib HOG (one call)": lambda: dlib_models.hog_detect(big, 1),
             "dlib shape predictor (300 calls)": lambda: [dlib_models.predict_68(big, rect) for _ in range(300)],
             "JPEG decode (40 calls)": lambda: [images.read_rgb(root / relpath) for _ in range(40)],
             "python sort (holds the GIL)": lambda: sorted(range(3_000_000, 0, -1))}
    dlib_models.HOG_DETECTORS.warm()
    dlib_models.SHAPE_PREDICTORS.warm()
    out = {}
    for name, work in calls.items():
        done, gaps = threading.Event(), []
        thread = threading.Thread(target=lambda w=work, d=done: (w(), d.set()))
        start = last = time.perf_counter()
        thread.start()
        while not done.is_set():
            time.sleep(0.0005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        thread.join()
        out[name] = {"seconds": round(time.perf_counter() - start, 2),
                     "main_thread_longest_wait_ms": round(1000 * max(gaps), 1),
                     "main_thread_median_wait_ms": round(1000 * float(np.median(gaps)), 2)}
    return out


def upscaled_inputs(root: Path, table: pa.Table, factor: int = 2) -> tuple[Path, pa.Table]:
    """The same faces as factor-times larger JPEGs (q90), with boxes and points mapped: larger AffectNet images."""
    import cv2
    from PIL import Image

    big = root.parent / f"{root.name}-x{factor}"
    big.mkdir(exist_ok=True)
    for relpath in table.column("relpath").to_pylist():
        if not (big / relpath).is_file():
            image = images.read_rgb(root / relpath)
            size = (image.shape[1] * factor, image.shape[0] * factor)
            Image.fromarray(cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)).save(big / relpath, quality=90)
    boxes = vectors_to_numpy(table.column("given_bbox")) * factor                        # [N, 4]
    points = vectors_to_numpy(table.column("given_landmarks")) * factor + 0.5 * (factor - 1)   # pixel centres
    return big, table.set_column(2, "given_bbox", vectors_to_arrow(boxes.astype(np.float32))).set_column(
        3, "given_landmarks", vectors_to_arrow(points.astype(np.float32)))


def reduced_decode(root: Path, table: pa.Table, reduce: int | None = None) -> dict:
    """Full vs reduced decoding of the given-box crops: decode time and the change in crops, points and AUs.

    reduce None: the stage's own rule (images.reduction_for_scale); an int forces that reduction.
    """
    from pipeline.stages.action_units import estimate_aus

    rows, backend, config = faces._shard_rows(table), faces.GivenBoxes(), faces.AlignConfig(detector="given")
    crops: dict[str, list[np.ndarray]] = {"full": [], "reduced": []}
    seconds, used, truth = {"full": 0.0, "reduced": 0.0}, [], []
    for row in rows:
        with images.OpenImage(root / row["relpath"]) as handle:
            width, height = handle.size
        planned = backend.plan(row, width, height, config)
        k = reduce or images.reduction_for_scale(geometry.transform_scale(planned.transform))
        for name, wanted in (("full", 1), ("reduced", k)):
            start = time.process_time()
            with images.OpenImage(root / row["relpath"]) as handle:
                pixels, got = handle.rgb(wanted)
            seconds[name] += time.process_time() - start
            to_crop = (planned.transform if got == 1
                       else geometry.compose(planned.transform, images.reduced_to_full(got)))
            crops[name].append(geometry.warp_crop(pixels, to_crop, config.crop_size))
        used.append(got)
        truth.append(geometry.map_points(np.asarray(row["given_landmarks"]).reshape(68, 2), planned.transform))
    full, small = np.stack(crops["full"]), np.stack(crops["reduced"])         # [N, 256, 256, 3]
    p_full, p_small = landmarks.dlib_landmarks(full)[0], landmarks.dlib_landmarks(small)[0]
    moved = np.linalg.norm(p_full - p_small, axis=2)                         # [N, 68] px in the crop
    au_change = np.abs(estimate_aus(p_full) - estimate_aus(p_small))          # [N, 17]
    truth = np.stack(truth)                                                  # [N, 68, 2] true points in the crop
    ocular = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=1)[:, None]     # [N, 1] 300-W normaliser
    nme = {name: round(float(100 * (np.linalg.norm(p - truth, axis=2) / ocular).mean()), 3)
           for name, p in (("full", p_full), ("reduced", p_small))}
    return {"image_side": int(width), "reduction_used": sorted(set(used)),
            "decode_cpu_ms_full": round(1000 * seconds["full"] / len(rows), 2),
            "decode_cpu_ms_reduced": round(1000 * seconds["reduced"] / len(rows), 2),
            "crop_mean_abs_diff": round(float(np.abs(full.astype(float) - small.astype(float)).mean()), 2),
            "landmark_shift_px_mean": round(float(moved.mean()), 3),
            "landmark_shift_px_p95": round(float(np.percentile(moved, 95)), 3),
            "au_change_mean": round(float(au_change.mean()), 4), "au_change_max": round(float(au_change.max()), 3),
            "dlib_nme_percent_full": nme["full"], "dlib_nme_percent_reduced": nme["reduced"]}


def hrnet_rates(n: int) -> dict:
    import torch

    from pipeline.models.hrnet import HRNetW18, predict

    torch.manual_seed(0)
    crops = np.random.default_rng(0).integers(0, 255, (max(n, 8), 256, 256, 3), dtype=np.uint8)
    model = HRNetW18(19).eval()
    predict(model, crops[:1], device="cpu")
    start = time.perf_counter()
    predict(model, crops[:n], device="cpu", batch_size=8)
    out = {"hrnet fp32 CPU (batch 8)": round(n / (time.perf_counter() - start), 2)}
    if torch.cuda.is_available():
        big = np.concatenate([crops] * (512 // len(crops) + 1))[:512]
        predict(model, big[:64], device="cuda", batch_size=64)
        torch.cuda.synchronize()
        start = time.perf_counter()
        predict(model, big, device="cuda", batch_size=256)
        out["hrnet bf16 CUDA (batch 256)"] = round(len(big) / (time.perf_counter() - start), 1)
    return out


def _print_table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    for name, value in rows.items():
        if isinstance(value, dict):
            print(f"  {name:34s} " + "  ".join(f"{k} {v}" for k, v in value.items()))
        else:
            print(f"  {name:34s} {value}")


def _sections(root: Path, table: pa.Table, args) -> dict[str, dict]:
    """Section name -> {result key: thunk}; `--sections` picks which run."""
    given, hog, hog0 = faces.AlignConfig(detector="given"), faces.AlignConfig(), faces.AlignConfig(upsample=0)
    hog_table = table.slice(0, args.hog_n).drop_columns(["given_bbox", "given_landmarks"])
    given_table, repeat = table.slice(0, args.n), args.repeat
    return {
        "stages": {"stages_given_boxes": lambda: stage_table(root, given_table, given, repeat),
                   "stages_dlib_hog_upsample0": lambda: stage_table(root, hog_table, hog0, repeat),
                   "stages_dlib_hog": lambda: stage_table(root, hog_table, hog, repeat)},
        "pipeline": {"pipeline_given_boxes": lambda: pipeline_rates(root, given_table, given, repeat, SHARD,
                                                                    _cache_dir()),
                     "pipeline_dlib_hog_upsample0": lambda: pipeline_rates(root, hog_table, hog0, repeat, SHARD,
                                                                           _cache_dir())},
        "mappers": {"mappers_given_boxes": lambda: mapper_rates(root, given_table, given, repeat),
                    "mappers_dlib_hog": lambda: mapper_rates(root, hog_table, hog, repeat),
                    "mappers_dlib_hog_upsample0": lambda: mapper_rates(root, hog_table, hog0, repeat)},
        "decoders": {"decoders_500px": lambda: decoders(root, given_table.column("relpath").to_pylist())},
        "gil": {"gil": lambda: gil_release(root, given_table.column("relpath")[0].as_py())},
        "sharing": {"sharing_dlib_hog_2_threads": lambda: sharing_rates(root, hog_table, hog, repeat),
                    "sharing_given_boxes_2_threads": lambda: sharing_rates(root, given_table, given, repeat)},
        "reduced": {"reduced_decode_500px_forced_2": lambda: reduced_decode(root, table.slice(0, min(100, args.n)), 2),
                    "reduced_decode_1000px_rule": lambda: reduced_decode(*upscaled_inputs(
                        root, table.slice(0, min(100, args.n))))},
        "hrnet": {"hrnet": lambda: hrnet_rates(8)},
    }


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images on the given-box path")
    parser.add_argument("--hog-n", type=int, default=30, help="images on the HOG path")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sections", default="all", help="comma-separated, of: stages, pipeline, mappers, "
                        "decoders, gil, sharing, reduced, hrnet (default all); other sections stay in the JSON")
    parser.add_argument("--quick", action="store_true", help="n 60, hog-n 20, repeat 1")
    args = parser.parse_args()
    if args.quick:
        args.n, args.hog_n, args.repeat = 60, 20, 1
    import cv2
    import torch

    torch.set_num_threads(2)
    load_before = _load()
    root, table = make_inputs(max(args.n, args.hog_n))
    sections = _sections(root, table, args)
    chosen = list(sections) if args.sections == "all" else args.sections.split(",")
    unknown = [name for name in chosen if name not in sections]
    if unknown:
        parser.error(f"unknown sections {unknown}; valid: {', '.join(sections)}")
    out = json.loads(RESULTS.read_text()) if RESULTS.is_file() and args.sections != "all" else {}
    for name in chosen:
        for key, thunk in sections[name].items():
            before = _load()
            out[key] = thunk()
            out[key]["load_before_after"] = [before, _load()]
            _print_table(key, out[key])
    meta = {"machine": f"{platform.machine()} {os.cpu_count()}-core CPU, shared with other sessions; Python "
                       f"{platform.python_version()}, torch {torch.__version__}, opencv {cv2.__version__}, "
                       f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
            "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": _load(),
            "images": f"{args.n} synthetic 500x500 JPEGs (q90), faces ~half the frame; HOG path on the first {args.hog_n}",
            "statistic": f"median of {args.repeat} runs", "shard_size": SHARD,
            "command": "bench/bench_face_stages.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                              (("n", args.n), ("hog_n", args.hog_n),
                                                               ("repeat", args.repeat), ("sections", args.sections))),
            "sections_this_run": chosen,
            "not_measured": "fan (no weights here), openface (no binary here)"}
    out = {**out, **meta}
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    write_markdown(out, RESULTS.with_suffix(".md"))
    print(f"\nsaved {RESULTS} and {RESULTS.with_suffix('.md')}")


if __name__ == "__main__":
    main()
