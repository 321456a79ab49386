"""Science bench: baseline vs LDL-ALSG vs LA-Net side by side on the synthetic set with 30% symmetric noise.

    python bench/science_lanet.py                      # 3 seeds, tiny config (CPU), defaults below
    python bench/science_lanet.py --samples 600 --epochs 30 --seeds 0,1,2

Prepares (once, cached under runs/science_lanet/data) a small synthetic version with the real prepare
(bench.prepared: given boxes, provided 68 points, estimated AUs, exact KNN graphs, label variant sym-0.30),
then runs the noise-robustness harness (bench.noise) with training/configs/benchmark_tiny.yaml for the three
methods, and adds LA-Net's own diagnostics per seed (from each run's metrics.jsonl: share of flipped samples
whose EMA target's argmax is the clean label, agreement on kept labels, share of ambiguous targets).
Writes bench/results/science_lanet.{json,md,csv,png}. Finished cells are not retrained (the harness caches
them by config fingerprint); --force retrains. The synthetic set checks the machinery and the methods; it is
no measure of real-world accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

NAME = "science_lanet"
METHODS = "baseline,ldl_alsg,lanet"
NOISE = "sym-0.30"
LANET_KEYS = ("target_flipped_recovered", "target_kept_agreement", "target_ambiguous_share",
              "target_mean_confidence", "target_recovered")


def prepared_version(samples: int, seed: int = 0) -> dict:
    """The small version's roots and id (prepared on first use; the prepare reuses it afterwards)."""
    from bench.prepared import prepare_small_version

    tic = time.perf_counter()
    built = prepare_small_version(PROJECT / "runs" / NAME / "data", n=samples, crop_size=64, seed=seed,
                                  variants=("clean", NOISE))
    return {"dataset": built.dataset, "version": built.version, "artifacts_root": str(built.artifacts_root),
            "manifests_root": str(built.manifests_root), "samples": samples, "seed": seed,
            "prepare_seconds": round(time.perf_counter() - tic, 1)}


def lanet_diagnostics(cells: list[dict]) -> list[dict]:
    """LA-Net's target diagnostics at its last evaluation, one row per seed."""
    rows = []
    for cell in cells:
        if cell.get("status") != "done" or cell["cell"]["method"] != "lanet":
            continue
        metrics = Path(cell["run_dir"]) / "metrics.jsonl"
        evals = [json.loads(line) for line in metrics.read_text().splitlines() if '"eval"' in line]
        last = evals[-1] if evals else {}
        rows.append({"seed": cell["cell"]["seed"], **{k: last.get(k) for k in LANET_KEYS}})
    return sorted(rows, key=lambda r: r["seed"])


def lanet_markdown(rows: list[dict]) -> str:
    def pct(value) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = ["## LA-Net target distributions (last evaluation)", "",
             "| Seed | Flipped: target argmax = clean (%) | Kept: target argmax = label (%) | Ambiguous targets (%) |",
             "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['seed']} | {pct(r['target_flipped_recovered'])} | {pct(r['target_kept_agreement'])} | "
              f"{pct(r['target_ambiguous_share'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=240, help="synthetic samples in the tiny version")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=METHODS, help="comma-separated subset (finished cells are reused)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    from bench.noise.cli import main as harness
    from bench.noise.plan import DEFAULT_OUT

    data = prepared_version(args.samples)
    tic = time.perf_counter()
    harness_args = ["--dataset", data["dataset"], "--methods", args.methods, "--noise", NOISE, "--seeds", args.seeds,
                    "--config", str(PROJECT / "training" / "configs" / "benchmark_tiny.yaml"), "--name", NAME,
                    "--runs-root", str(PROJECT / "runs" / NAME / "runs"),
                    "--set", f"artifacts_root={data['artifacts_root']}",
                    "--set", f"manifests_root={data['manifests_root']}",
                    "--set", f"version={data['version']}", "--set", f"epochs={args.epochs}",
                    "--set", f"runtime.eval_every={args.epochs}"]
    status = harness(harness_args + (["--force"] if args.force else []))
    summary_path = Path(DEFAULT_OUT) / f"{NAME}.json"
    summary = json.loads(summary_path.read_text())
    rows = lanet_diagnostics(summary["cells"])
    summary["lanet_targets"] = rows
    summary["science_bench"] = {"samples": args.samples, "epochs": args.epochs, "data": data,
                                "wall_seconds": round(time.perf_counter() - tic, 1)}
    summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    markdown = lanet_markdown(rows)
    with (Path(DEFAULT_OUT) / f"{NAME}.md").open("a") as out:
        out.write("\n" + markdown + f"\n{args.samples} samples, {args.epochs} epochs; this invocation took "
                  f"{summary['science_bench']['wall_seconds']} s wall (cells finished earlier are reused; "
                  "see each cell's train_seconds in the JSON).\n")
    print(markdown)
    return status


if __name__ == "__main__":
    sys.exit(main())
