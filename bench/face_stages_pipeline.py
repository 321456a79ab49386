"""bench_face_stages.py's pipeline section, its decoder comparison and its Markdown table writer.

- pipeline_rates: the prepare's own work units (faces -> landmarks -> AUs, each shard's part written to and
  read from the part store, as pipeline.prepare.run_stage runs them) with the serial, threads and processes
  mappers;
- decoders: JPEG decode CPU ms per image by Pillow (the project's reader) and OpenCV, full and 1/2 reduced;
- write_markdown: bench/results/bench_face_stages.md from the JSON.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import images
from pipeline.mappers import warm_stages
from pipeline.stages import action_units, faces, landmarks
from pipeline.stages.base import registered


def _pipeline_pass(mapper, root: Path, table: pa.Table, align_config: faces.AlignConfig, work_dir: Path,
                   shard: int) -> dict:
    """One pass of the prepare's per-image work units over `table` into fresh stores: wall s per stage."""
    from functools import partial

    from pipeline import assemble, prepare
    from pipeline.store.parts import PartStore

    keys = [f"{work_dir.name}-{i}" for i in range(table.num_rows)]
    configs = {"faces": align_config, "landmarks": landmarks.LandmarkConfig(), "action_units": action_units.AUConfig()}
    dirs = {stage: work_dir / stage for stage in configs}
    seconds, usable = {}, None
    for stage in (s for s in registered() if s.per_image):
        start = time.perf_counter()
        work = partial(prepare.shard_work, part=stage.part, config=configs[stage.name], store_dir=dirs[stage.name],
                       upstream={name: dirs[name] for name in stage.reads}, image_root=root)
        shards = assemble.pending_shards(PartStore(dirs[stage.name]), table, keys, shard, only=usable)
        prepare.run_stage(stage.name, work, shards, dirs[stage.name], mapper, progress=False)
        seconds[stage.name] = time.perf_counter() - start
        if stage.name == "faces":
            rows, _ = PartStore(dirs["faces"]).gather(keys, ["status"])
            ok = {k for k, status in zip(rows.column("key").to_pylist(), rows.column("status").to_pylist())
                  if status in faces.USABLE_STATUSES}
            usable = np.array([k in ok for k in keys])
    seconds["total"] = sum(seconds.values())
    return seconds


def pipeline_rates(root: Path, table: pa.Table, align_config: faces.AlignConfig, repeat: int, shard: int,
                   work_root: Path) -> dict:
    """The prepare's work units (part store included) per mapper: images/s per stage and in all (median).

    The worker pool is started and warm before timing, as in a prepare, where one pool serves all three
    stages; its start-up (spawn, imports, models) is reported on its own.
    """
    import tempfile
    from types import SimpleNamespace

    from pipeline.prepare import ProcessMapper, ShardMapper, ThreadMapper

    checks = ((faces.check_backend, align_config), (landmarks.check_backend, landmarks.LandmarkConfig()),
              (action_units.check_backend, action_units.AUConfig()))
    stages = SimpleNamespace(warm_checks=lambda: checks)
    warm_stages(checks)
    out, n = {}, table.num_rows
    for name, mapper in (("serial", ShardMapper()), ("threads-2", ThreadMapper(2)), ("processes-2", ProcessMapper(2))):
        mapper.start(stages)
        with tempfile.TemporaryDirectory(dir=work_root) as tmp:
            started = time.perf_counter()
            if getattr(mapper, "policy", None) is not None and mapper.policy.pool is not None:
                mapper.policy.pool.start()
            startup = time.perf_counter() - started
            _pipeline_pass(mapper, root, table.slice(0, 2 * shard), align_config, Path(tmp) / "warm", shard)
            runs = [_pipeline_pass(mapper, root, table, align_config, Path(tmp) / f"run{r}", shard) for r in range(repeat)]
        mapper.close()
        total = statistics.median([r["total"] for r in runs])
        out[name] = {stage: {"images_per_s": round(n / statistics.median([r[stage] for r in runs]), 1),
                             "share": round(statistics.median([r[stage] for r in runs]) / total, 3)} for stage in runs[0]}
        if name == "processes-2":
            out[name]["pool_start_s"] = round(startup, 2)
    return out


def decoders(root: Path, relpaths: list[str]) -> dict:
    """CPU ms per image: the project's reader (Pillow) and OpenCV, full and 1/2 reduced; OpenCV's pixels vs Pillow's."""
    import cv2

    paths = [root / r for r in relpaths]
    cv2.setNumThreads(1)

    def ms(read) -> float:
        cpu = time.process_time()
        for path in paths:
            read(path)
        return round(1000 * (time.process_time() - cpu) / len(paths), 3)

    same = sum(np.array_equal(images.read_rgb(p), cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for p in paths)
    return {"pillow_full_ms": ms(images.read_rgb), "pillow_reduced_2_ms": ms(lambda p: images.OpenImage(p).rgb(2)),
            "opencv_full_ms": ms(lambda p: cv2.imread(str(p), cv2.IMREAD_COLOR)),
            "opencv_reduced_2_ms": ms(lambda p: cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_2)),
            "opencv_full_same_pixels_as_pillow": f"{same} of {len(paths)}"}


def write_markdown(out: dict, path: Path) -> None:
    """The per-stage tables (serial, share of time) and the mapper / pipeline rates, from the JSON."""
    lines = ["# Per-image stages on 2 CPU cores (bench/bench_face_stages.py)", "",
             f"{out.get('machine', '')}. {out.get('images', '')}; {out.get('statistic', '')}, shards of "
             f"{out.get('shard_size', '')}. Each table: `uptime` load (1, 5, 15 min) before and after it.", ""]
    goals = (("pipeline_given_boxes", "given boxes + dlib 68 points + AU estimates, decode and part store included",
              150), ("pipeline_dlib_hog_upsample0", "dlib HOG (align.upsample=0) + dlib points + AU estimates", 25))
    for key, what, goal in goals:
        rows = out.get(key) or {}
        if "processes-2" in rows:
            rate = rows["processes-2"]["total"]["images_per_s"]
            lines.append(f"- **{what}**: {rate} images/s with 2 worker processes (goal >= {goal}; threads "
                         f"{rows['threads-2']['total']['images_per_s']}, serial {rows['serial']['total']['images_per_s']})")
    lines.append("")
    for key, rows in out.items():
        if not isinstance(rows, dict) or not key.startswith(("stages_", "pipeline_", "mappers_")):
            continue
        load = rows.get("load_before_after", "")
        lines += [f"## {key}", "", f"load {load}", ""]
        if key.startswith("pipeline_"):
            lines += ["| mapper | faces img/s | landmarks img/s | AUs img/s | **all img/s** | faces share |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            lines += [f"| {m} | {r['faces']['images_per_s']} | {r['landmarks']['images_per_s']} | "
                      f"{r['action_units']['images_per_s']} | **{r['total']['images_per_s']}** | {r['faces']['share']} |"
                      for m, r in rows.items() if isinstance(r, dict)]
        elif key.startswith("stages_"):
            lines += ["| stage (serial) | img/s | img per CPU-s | share |", "| --- | ---: | ---: | ---: |"]
            lines += [f"| {s} | {r['images_per_s']} | {r['images_per_cpu_s']} | {r['share']} |"
                      for s, r in rows.items() if isinstance(r, dict)]
        else:
            lines += ["| mapper (chain, no store) | img/s | img per CPU-s |", "| --- | ---: | ---: |"]
            lines += [f"| {m} | {r['images_per_s']} | {r['images_per_cpu_s']} |" for m, r in rows.items()
                      if isinstance(r, dict)]
        lines.append("")
    if isinstance(out.get("decoders_500px"), dict):
        lines += ["## JPEG decoders (500x500, CPU ms per image)", "",
                  *[f"- {k}: {v}" for k, v in out["decoders_500px"].items() if k != "load_before_after"], ""]
    lines += _decode_notes(out)
    path.write_text("\n".join(lines) + "\n")


def _decode_notes(out: dict) -> list[str]:
    """One decode per image and reduced decoding: what the measured tables say about them."""
    stages, pipe = out.get("stages_given_boxes") or {}, (out.get("pipeline_given_boxes") or {}).get("serial")
    notes = ["## Decoding: once per image, and reduced", ""]
    if stages and pipe:
        again = 1000 / stages["decode"]["images_per_s"] + 1000 / stages["align"]["images_per_s"]
        stored = 1000 / pipe["landmarks"]["images_per_s"] - 1000 / stages["landmarks"]["images_per_s"]
        notes.append(f"- One decode per image: the faces stage decodes each image once; landmarks and AUs read "
                     f"its 256 px crop back from the part store, {stored:.2f} ms per image (landmarks stage in the "
                     f"pipeline minus in memory), where decoding and warping again would cost {again:.2f} ms.")
    forced, rule = out.get("reduced_decode_500px_forced_2"), out.get("reduced_decode_1000px_rule")
    if forced and rule:
        notes.append(f"- Reduced decoding (Pillow draft / libjpeg DCT scaling, as cv2.IMREAD_REDUCED_COLOR_2): "
                     f"the given-box rule decodes at 1/k only when the crop still gets one decoded pixel per crop "
                     f"pixel, so 500 px AffectNet-like images decode full; forcing 1/2 there saves "
                     f"{forced['decode_cpu_ms_full'] - forced['decode_cpu_ms_reduced']:.2f} ms but moves dlib's "
                     f"points by {forced['landmark_shift_px_mean']} px on average (AUs by {forced['au_change_mean']}):"
                     f" an output change, not made. On 1000 px images the rule picks 1/{rule['reduction_used'][-1]}, "
                     f"{rule['decode_cpu_ms_full']} -> {rule['decode_cpu_ms_reduced']} ms.")
    decoders = out.get("decoders_500px")
    if decoders:
        notes.append(f"- Decoder: OpenCV's full JPEG decode gives the same pixels as Pillow's "
                     f"({decoders['opencv_full_same_pixels_as_pillow']}) in {decoders['opencv_full_ms']} ms instead "
                     f"of {decoders['pillow_full_ms']} ms (pipeline.images reads through Pillow).")
    return notes + [""]
