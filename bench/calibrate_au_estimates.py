"""Calibrate the landmark-geometry AU estimates against the synthetic generator's known AU intensities.

Generates N synthetic samples (true 68 points, true AU intensities), fits the neutral reference and
per-AU scales (pipeline.stages.action_units.calibrate_estimate), reports per-AU correlation and mean absolute
error on held-out samples (true points and dlib points on aligned crops), and saves the calibration to
bench/results/au_calibration.json; paste `python_literal` into pipeline/stages/action_units.py CALIBRATION.

    .venv/bin/python bench/calibrate_au_estimates.py --n 500
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from pipeline import geometry
from pipeline.stages.action_units import AU_INTENSITY_NAMES, calibrate_estimate, estimate_aus
from pipeline.stages.faces import AlignConfig, detect_dlib
from pipeline.stages.landmarks import dlib_landmarks
from pipeline.synthetic import generator as synthetic


def _samples(n: int, seed: int):
    config = synthetic.SyntheticConfig(n=n, seed=seed, num_classes=8)
    return [synthetic.generate_sample(config, i) for i in range(n)]


def _report(name: str, predicted: np.ndarray, truth: np.ndarray) -> dict:
    rows = {}
    for k, au in enumerate(AU_INTENSITY_NAMES):
        t, p = truth[:, k], predicted[:, k]
        corr = float(np.corrcoef(t, p)[0, 1]) if np.ptp(t) > 0 and np.ptp(p) > 0 else float("nan")
        rows[au] = {"corr": round(corr, 3), "mae": round(float(np.abs(t - p).mean()), 3)}
    print(f"{name}: " + "  ".join(f"{au} r={v['corr']:.2f}" for au, v in rows.items()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--holdout", type=int, default=160)
    args = parser.parse_args()
    start = time.time()
    fit = _samples(args.n, seed=11)
    held = _samples(args.holdout, seed=12)
    points = np.stack([s.landmarks for s in fit])                      # [N, 68, 2]
    truth = np.stack([s.au_intensity for s in fit])                    # [N, 17]
    neutral = np.array([s.label == 0 and s.distribution.max() == 1.0 for s in fit])
    calibration = calibrate_estimate(points, truth, neutral)
    held_truth = np.stack([s.au_intensity for s in held])
    report = {"true_points": _report("held-out, true points", estimate_aus(np.stack([s.landmarks for s in held]),
                                                                           calibration), held_truth)}
    crops, keep = [], []
    for i, s in enumerate(held):
        face = detect_dlib(s.image, AlignConfig())
        if face.status in ("ok", "multi_face"):
            crops.append(geometry.warp_crop(s.image, face.transform, 256))
            keep.append(i)
    dlib_points, _ = dlib_landmarks(np.stack(crops))
    report["dlib_points"] = _report("held-out, dlib points", estimate_aus(dlib_points, calibration),
                                    held_truth[keep])
    literal = (f"EstimateCalibration(\n    neutral={tuple(round(v, 5) for v in calibration.neutral)},\n"
               f"    scales={{\n" + "".join(
                   f"        {au!r}: {tuple((n, s, round(w, 4)) for n, s, w in spec)},\n"
                   for au, spec in calibration.scales.items()) + "    },\n    source=\"synthetic\")")
    out = {"machine": f"{platform.machine()} {platform.processor() or ''} 2-core CPU".strip(),
           "n_fit": args.n, "n_holdout": args.holdout, "n_neutral": int(neutral.sum()),
           "seconds": round(time.time() - start, 1), "neutral": calibration.neutral,
           "scales": calibration.scales, "report": report, "python_literal": literal}
    path = Path(__file__).parent / "results" / "au_calibration.json"
    path.write_text(json.dumps(out, indent=2))
    print(literal)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
