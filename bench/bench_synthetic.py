"""The synthetic generator's measured criteria: generation cost, dlib detection and NME, nearest centroid.

Generates --n faces (8 classes, so contempt is covered) at the default 256 px and measures, with the
project's default models (pipeline.synthetic.criteria): dlib HOG detection per class (upsample 0, score
>= 0.5), dlib 68-point NME against the true points, leave-one-out nearest-centroid accuracy on
Procrustes-aligned landmarks (dlib's and the true ones), the share of 8 nearest landmark neighbours of
the same class, and the identity / expression shape spread. Prints a table; writes
bench/results/bench_synthetic.json and .md.

    .venv/bin/python bench/bench_synthetic.py --n 1600
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pipeline.contract.classes import CANONICAL_CLASSES
from pipeline.contract.config import build_dataclass, overrides_to_dict
from pipeline.synthetic import criteria
from pipeline.synthetic.generator import (
    SYNTHETIC_VERSION,
    SyntheticConfig,
    generate_sample,
)

RESULTS = Path(__file__).parent / "results"


def _knn_agreement(rows: list[criteria.Measured], k: int = 8) -> float:
    """Share of each face's k nearest neighbours (Procrustes dlib points, Euclidean) with its class."""
    kept = [r for r in rows if r.points is not None and r.single]
    labels = np.array([r.label for r in kept])
    x = criteria.procrustes_shapes(np.stack([r.points for r in kept])).reshape(len(kept), -1)  # [N, 136]
    d = ((x[:, None] - x[None]) ** 2).sum(-1)  # [N, N]
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :k]  # [N, k]
    return float((labels[nearest] == labels[:, None]).mean())


def measure(config: SyntheticConfig) -> dict:
    generate_sample(config, 0)  # load the source photos and dlib once
    start, cpu = time.perf_counter(), time.process_time()
    samples = [generate_sample(config, i) for i in range(config.n)]
    ms = 1000 * (time.perf_counter() - start) / config.n
    cpu_ms = 1000 * (time.process_time() - cpu) / config.n
    rows = criteria.dlib_measure(samples)
    nme = criteria.nme(rows)
    nc_dlib, nc_dlib_class, nc_n = criteria.nearest_centroid_accuracy(rows, config.num_classes)
    nc_true, nc_true_class, _ = criteria.nearest_centroid_accuracy(rows, config.num_classes, use_truth=True)
    nc_all, _, nc_all_n = criteria.nearest_centroid_accuracy(rows, config.num_classes, singles_only=False)
    nc_v1, _, nc_v1_n = criteria.nearest_centroid_accuracy(rows, config.num_classes, min_intensity=0.5)
    identity, expression = criteria.shape_spread(config.num_identities, config.seed, config.identity_strength,
                                                 config.num_sources)
    sources = sorted({s.source for s in samples})
    per_source = {name: {"detected": float(np.mean([r.points is not None for r, s in zip(rows, samples)
                                                    if s.source == name])),
                         "nme_mean": float(criteria.nme([r for r, s in zip(rows, samples)
                                                         if s.source == name]).mean())}
                  for name in sources}
    return {
        "config": dataclasses.asdict(config), "synthetic_version": SYNTHETIC_VERSION,
        "generate_ms_per_image": ms, "generate_cpu_ms_per_image": cpu_ms, "load_average": os.getloadavg(), "machine": platform.platform(),
        "detection_per_class": criteria.detection_rates(rows, config.num_classes),
        "detection_overall": float(np.mean([r.points is not None for r in rows])),
        "nme_mean": float(nme.mean()), "nme_p90": float(np.percentile(nme, 90)), "nme_max": float(nme.max()),
        "nearest_centroid_dlib": nc_dlib, "nearest_centroid_dlib_per_class": nc_dlib_class,
        "nearest_centroid_true_points": nc_true, "nearest_centroid_true_per_class": nc_true_class,
        "nearest_centroid_dlib_with_blends": nc_all, "nearest_centroid_faces": nc_n,
        "nearest_centroid_faces_with_blends": nc_all_n,
        "nearest_centroid_dlib_intensity_0.5": nc_v1, "nearest_centroid_faces_intensity_0.5": nc_v1_n,
        "knn8_same_class_dlib": _knn_agreement(rows),
        "shape_spread_identity_rms": identity, "shape_spread_full_expression_rms": expression,
        "shape_spread_drawn_expression_rms": criteria.drawn_expression_rms(expression, config.min_intensity,
                                                                           config.max_intensity),
        "per_source": per_source,
    }


def _crops(config: SyntheticConfig, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned crops [N, size, size, 3] uint8 from the true points (as faces=given does), labels [N], test mask [N]."""
    import cv2

    from pipeline.geometry import transform_from_points
    from pipeline.synthetic.generator import split_of

    images, labels = [], []
    for i in range(config.n):
        s = generate_sample(config, i)
        m = transform_from_points(s.landmarks.astype(np.float64), size)  # [2, 3]
        images.append(cv2.warpAffine(s.image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT))
        labels.append(s.label)
    test = np.array([split_of(config, i) == "test" for i in range(config.n)])
    return np.stack(images), np.array(labels), test


def cnn_check(config: SyntheticConfig, size: int = 64, epochs: int = 20, seed: int = 0) -> dict:
    """Train a small CNN (four strided conv blocks) on aligned crops; clean test accuracy after each epoch."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    start = time.perf_counter()
    images, labels, test = _crops(config, size)
    crop_seconds = time.perf_counter() - start
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # [N, 3, S, S]
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    y = torch.from_numpy(labels).long()  # [N]
    train_idx, test_idx = torch.from_numpy(np.flatnonzero(~test)), torch.from_numpy(np.flatnonzero(test))
    blocks, channels = [], 3
    for out in (24, 48, 96, 192):  # [B, out, S / 2^k, S / 2^k] after block k
        blocks += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, config.num_classes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * ((len(train_idx) + 63) // 64))
    gen = torch.Generator().manual_seed(seed)
    curve = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_idx), generator=gen).split(64):
            shift = torch.randint(-3, 4, (2,), generator=gen).tolist()
            inputs = torch.roll(x[train_idx[batch]], shifts=shift, dims=(2, 3))  # [B, 3, S, S] small translation
            loss = nn.functional.cross_entropy(model(inputs), y[train_idx[batch]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            curve.append(float((model(x[test_idx]).argmax(1) == y[test_idx]).float().mean()))
    return {"cnn_test_accuracy": curve[-1], "cnn_curve": curve, "cnn_epochs": epochs,
            "cnn_train_seconds": time.perf_counter() - start, "cnn_train_cpu_seconds": time.process_time() - cpu_start,
            "cnn_torch_threads": torch.get_num_threads(), "cnn_crop_seconds": crop_seconds,
            "cnn_train": len(train_idx), "cnn_test": len(test_idx), "cnn_size": size,
            "cnn_num_classes": config.num_classes, "cnn_load_average": os.getloadavg()}


def table(result: dict) -> str:
    names = CANONICAL_CLASSES[:result["config"]["num_classes"]]
    det, ncd, nct = (result[k] for k in ("detection_per_class", "nearest_centroid_dlib_per_class",
                                         "nearest_centroid_true_per_class"))
    lines = ["| class | HOG detected | nearest centroid (dlib points) | nearest centroid (true points) |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {c} | {det[c]:.3f} | {ncd[c]:.3f} | {nct[c]:.3f} |" for c in names]
    lines += [(f"| **all** | {result['detection_overall']:.3f} | {result['nearest_centroid_dlib']:.3f} "
               f"| {result['nearest_centroid_true_points']:.3f} |"), ""]
    sources = ", ".join(f"{k} detected {v['detected']:.3f}, NME {v['nme_mean']:.4f}"
                        for k, v in result["per_source"].items())
    load = ", ".join(f"{v:.2f}" for v in result["load_average"])
    lines += [
        (f"- dlib NME (outer eye corners): mean {result['nme_mean']:.4f}, p90 {result['nme_p90']:.4f}, "
         f"max {result['nme_max']:.4f}"),
        f"- per source photo: {sources}",
        (f"- nearest centroid, blends included: {result['nearest_centroid_dlib_with_blends']:.3f} "
         f"({result['nearest_centroid_faces_with_blends']} faces; singles: {result['nearest_centroid_faces']})"),
        ("- nearest centroid as generator v1 measured it (dlib points, singles at intensity >= 0.5; v1: 0.93): "
         f"{result['nearest_centroid_dlib_intensity_0.5']:.3f} "
         f"({result['nearest_centroid_faces_intensity_0.5']} faces)"),
        f"- 8 nearest landmark neighbours of the same class (dlib points): {result['knn8_same_class_dlib']:.3f}",
        (f"- shape spread (face units, RMS per point): identities {result['shape_spread_identity_rms']:.4f}, "
         f"full expression {result['shape_spread_full_expression_rms']:.4f}, drawn expression "
         f"{result['shape_spread_drawn_expression_rms']:.4f}"),
        (f"- generation {result['generate_ms_per_image']:.1f} ms wall, "
         f"{result.get('generate_cpu_ms_per_image', float('nan')):.1f} ms CPU per "
         f"{result['config']['size']} px image (load average {load})"),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1600)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="SyntheticConfig overrides, e.g. identity_strength=0.75")
    parser.add_argument("--cnn-n", type=int, default=0,
                        help="also train a small CNN for --cnn-epochs on this many 7-class faces (64 px crops)")
    parser.add_argument("--cnn-epochs", type=int, default=20)
    parser.add_argument("--out", default="bench_synthetic")
    args = parser.parse_args()
    overrides = overrides_to_dict(args.set)      # the one --set parser: values read as YAML, then typed and ranged
    config = build_dataclass(SyntheticConfig, {"n": args.n, "seed": args.seed, "num_classes": 8, **overrides})
    result = measure(config) if args.n else {}
    if args.cnn_n:
        cnn_config = dataclasses.replace(config, n=args.cnn_n, num_classes=7)
        result["cnn"] = cnn_check(cnn_config, epochs=args.cnn_epochs)
        print(json.dumps(result["cnn"]))
    text = table(result) if args.n else ""
    if "cnn" in result:
        c = result["cnn"]
        text += (f"\n- small CNN, {c['cnn_size']} px aligned crops, {c['cnn_num_classes']} classes, {c['cnn_train']} "
                 f"train / {c['cnn_test']} test, {c['cnn_epochs']} epochs in {c['cnn_train_seconds']:.0f} s wall, "
                 f"{c['cnn_train_cpu_seconds']:.0f} s CPU on {c['cnn_torch_threads']} threads "
                 f"(load average {c['cnn_load_average'][0]:.1f}): "
                 f"clean test accuracy {c['cnn_test_accuracy']:.3f}")
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    command = "    .venv/bin/python bench/bench_synthetic.py --n " + str(args.n) + "".join(
        f" --set {item}" for item in args.set) + (f" --cnn-n {args.cnn_n}" if args.cnn_n else "")
    (RESULTS / f"{args.out}.md").write_text(
        f"# Synthetic v{SYNTHETIC_VERSION}: measured criteria\n\n{command}\n\n{text}\n")


if __name__ == "__main__":
    main()
