"""How well the label audit finds known flips, and what training on its cleaned variants gives back.

    python bench/audit.py [--work /tmp/fer-audit] [--n 1000] [--noise sym-0.30,asym-0.30] [--seeds 0,1,2]
        [--folds 5] [--jobs 1] [--train-config training/configs/benchmark_memorise_cpu.yaml] [--no-train]
        [--train-references] [--tables-only] [--name audit_synthetic_cpu]

On the CPU benchmark's version (synthetic v2, n=1000 with the generator's validation split, prepared by
bench.prepared as bench/memorisation.py does: 608 train / 196 val / 196 test), for every noise variant and
seed: the audit (`training.audit.run.run_audit`, its default recipe, audit seed = the seed) and its numbers per
signal (AUROC and precision@n_flipped against the known flips); then the baseline under the CPU benchmark's
recipe (the `train` layer of --train-config, runtime.seed = the seed) on both cleaned variants (flagged
labels dropped / relabelled). The clean and noisy references are the same baseline cells of the CPU benchmark
table (bench/results/benchmark_memorise_synthetic_cpu.json: same version, recipe and seeds), or, with
--train-references, trained here too. The share of the accuracy the noise cost that a cleaned variant gives
back is (cleaned - noisy) / (clean - noisy), per seed.

Every finished cell is kept in <work>/cells/*.json, so a killed bench resumes (and so do the audits and the
runs themselves); several bench processes on disjoint --noise/--seeds may share one --work. The tables are
built from every cell in <work>/cells and written to bench/results/<name>.json and .md after every cell
(--tables-only: just that), with the load average.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

log = logging.getLogger("bench.audit")
RESULTS = PROJECT / "bench" / "results"
TRAIN_CONFIG = PROJECT / "training" / "configs" / "benchmark_memorise_cpu.yaml"
REFERENCES = RESULTS / "benchmark_memorise_synthetic_cpu.json"
VARIANTS = ("clean", "sym-0.30", "asym-0.30")    # the CPU benchmark version's label variants (part of its id)
LABEL_SIGNALS = ("cleanlab", "neighbours-au", "neighbours-landmarks", "neighbours-va", "combined")


def audit_cell(version, noise: str, seed: int, folds: int, jobs: int) -> dict:
    from training.audit.config import audit_config
    from training.audit.run import run_audit

    config = audit_config([f"dataset={version.dataset}", f"version={version.version}", f"noise={noise}",
                           f"seed={seed}", f"folds={folds}", f"jobs={jobs}",
                           f"artifacts_root={version.artifacts_root}", f"manifests_root={version.manifests_root}"])
    return run_audit(config)


def train_cell(version, variant: str, seed: int, train_config: Path, runs: Path) -> dict:
    """The baseline under the benchmark recipe on one label variant (resuming or reusing its run)."""
    from bench.noise.plan import flatten, load_benchmark_file
    from training.config import resolve_config
    from training.engine import fit

    _, common, _ = load_benchmark_file(train_config)
    run_id = f"baseline-{variant}-s{seed}"
    run_dir = runs / run_id
    done = run_dir / "results.json"
    if done.is_file():
        return {**json.loads(done.read_text())["final"], "run_dir": str(run_dir), "reused": True}
    overrides = flatten(common) + [("runtime.seed", seed), ("runtime.threads", 1), ("version", version.version),
                                   ("artifacts_root", str(version.artifacts_root)),
                                   ("manifests_root", str(version.manifests_root)),
                                   ("runtime.runs_root", str(runs)), ("runtime.run_id", run_id)]
    if (run_dir / "checkpoints" / "last.pt").is_file():
        overrides.append(("runtime.resume", str(run_dir)))
    tic = time.perf_counter()
    final = fit(resolve_config("baseline", version.dataset, variant, None, overrides))
    return {**final, "seconds": round(time.perf_counter() - tic, 1)}


def cell(work: Path, key: str, compute) -> dict:
    """A cell's result from <work>/cells/<key>.json, or computed and saved there."""
    path = work / "cells" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    load = os.getloadavg()[0]
    result = compute()
    result["load_average_1min_start_end"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if len(values) > 1 else \
        f"{values[0]:.{digits}f}"


def tables(summary: dict) -> str:
    """The markdown tables: signals per noise variant; baseline accuracy per label set."""
    lines = [f"# Label audit on synthetic {summary['version']} (n={summary['n']}; {summary['train_faces']} training "
             f"faces)", "", "Cells: `python bench/audit.py --work <work> --train-references` (here: one process per "
             f"--noise on one work folder); this file written by `{summary['command']}`.", "",
             "## How well each signal ranks the flipped labels (mean ± std over the seeds that finished)", ""]
    for noise, cells in summary["audits"].items():
        seeds = sorted(cells)
        lines += [f"### {noise} (seeds {', '.join(seeds)}; {cells[seeds[0]]['n_flipped']} flipped)", "",
                  "| signal | AUROC | precision@n_flipped | flagged | flag precision |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for signal in cells[seeds[0]]["signals"]:
            rows = [cells[s]["signals"][signal] for s in seeds if signal in cells[s]["signals"]]
            lines.append(f"| {signal} | {mean_std([r['auroc'] for r in rows])} | "
                         f"{mean_std([r['precision_at_n_flipped'] for r in rows])} | "
                         f"{mean_std([r['flagged'] for r in rows], 0)} | "
                         f"{mean_std([r['flag_precision'] for r in rows])} |")
        weights = {k: np.mean([cells[s]["weights"][k] for s in seeds]) for k in cells[seeds[0]]["weights"]}
        times = [cells[s]["wall_seconds"] for s in seeds]
        cpu = [cells[s]["cpu_seconds"] for s in seeds]
        loads = [cells[s]["load_average_1min_start_end"] for s in seeds]
        lines += ["", "Combination weights (mean): " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()),
                  f"Audit time per seed: {', '.join(f'{t:.0f}' for t in times)} s wall, "
                  f"{', '.join(f'{c:.0f}' for c in cpu)} CPU-s (load average start/end {loads})", ""]
    if summary["training"]:
        lines += ["## The baseline (benchmark recipe) on each label set: test accuracy (mean ± std)", "",
                  "| noise | clean | noisy | cleaned: drop | cleaned: relabel | share of the noise's cost given back "
                  "(drop / relabel) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for noise, rows in summary["training"].items():
            acc = {part: [r["test_accuracy"] for r in rows.get(part, {}).values()] for part in
                   ("clean", "noisy", "drop", "relabel")}
            back = []
            for part in ("drop", "relabel"):
                seeds = [s for s in rows.get(part, {}) if s in rows.get("clean", {}) and s in rows.get("noisy", {})]
                shares = [(rows[part][s]["test_accuracy"] - rows["noisy"][s]["test_accuracy"])
                          / max(1e-9, rows["clean"][s]["test_accuracy"] - rows["noisy"][s]["test_accuracy"])
                          for s in seeds]
                back.append(mean_std(shares))
            lines.append(f"| {noise} | {mean_std(acc['clean'])} | {mean_std(acc['noisy'])} | {mean_std(acc['drop'])} "
                         f"| {mean_std(acc['relabel'])} | {back[0]} / {back[1]} |")
        for noise, rows in summary["training"].items():
            sources = {part: sorted({r.get("source", "trained by this bench") for r in rows.get(part, {}).values()})
                       for part in ("clean", "noisy")}
            lines.append(f"\n{noise}: clean reference {', '.join(sources['clean']) or '-'}; noisy reference "
                         f"{', '.join(sources['noisy']) or '-'}.")
    lines += ["", f"Machine: {summary['machine']}; load average at the end {summary['load_average_end']}.", ""]
    return "\n".join(lines)


def _atomic(path: Path, text: str) -> None:
    from pipeline.contract.atomic import write_text

    write_text(path, text)


def references(path: Path, version: str) -> dict:
    """{variant: {seed: record}} of the baseline cells of the CPU benchmark table on the same version."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("dataset_version") != version:
        log.info("%s is about version %s, not %s: no references from it", path, data.get("dataset_version"), version)
        return {}
    out: dict = {}
    for record in data.get("cells", []):
        cell = record["cell"]
        if cell["method"] == "baseline" and not cell.get("equal_images") and record.get("status") == "done":
            out.setdefault(cell["variant"], {})[str(cell["seed"])] = {
                "test_accuracy": record["metrics"]["test_accuracy"], "source": str(path.relative_to(PROJECT))}
    return out


def collect(work: Path, base: dict, reference: dict) -> dict:
    """The summary from every cell in <work>/cells (and the references where no trained reference is)."""
    summary = {**base, "audits": {}, "training": {}}
    for path in sorted((work / "cells").glob("*.json")):
        kind, rest = path.stem.split("-", 1)
        record = json.loads(path.read_text())
        if kind == "audit":
            noise, seed = rest.rsplit("-s", 1)
            summary["audits"].setdefault(noise, {})[seed] = record
            summary["train_faces"] = record["n"]
        elif rest.startswith("clean-s"):
            summary.setdefault("trained_clean", {})[rest.split("-s")[-1]] = record
        else:
            body, seed = rest.rsplit("-s", 1)
            noise, part = body.rsplit("-", 1)
            summary["training"].setdefault(noise, {}).setdefault(part, {})[seed] = record
    for noise, rows in summary["training"].items():
        rows.setdefault("clean", dict(summary.get("trained_clean") or reference.get("clean", {})))
        rows.setdefault("noisy", dict(reference.get(noise, {})))
    return summary


def write(summary: dict, name: str, work: Path) -> None:
    """bench/results/<name>.{json,md}; paths under the work folder are written as <work>/..."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(summary, indent=2, default=str) + "\n"
    for prefix in {str(work.resolve()), str(work)}:
        text = text.replace(prefix, "<work>")
    _atomic(RESULTS / f"{name}.json", text)
    _atomic(RESULTS / f"{name}.md", tables(json.loads(text)))


def main(argv: list[str] | None = None) -> int:
    from bench.prepared import prepare_small_version

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/fer-audit")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--noise", default="sym-0.30,asym-0.30")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="folds trained at once per audit")
    parser.add_argument("--train-config", default=str(TRAIN_CONFIG))
    parser.add_argument("--no-train", action="store_true", help="audits only")
    parser.add_argument("--train-references", action="store_true",
                        help="train the clean and noisy references too (default: the CPU benchmark table's cells)")
    parser.add_argument("--tables-only", action="store_true", help="rewrite the tables from <work>/cells only")
    parser.add_argument("--name", default="audit_synthetic_cpu")
    args = parser.parse_args(argv)
    work = Path(args.work)
    os.environ["FER_RUNS"] = str(work / "runs")        # audits and their cleaned variants live here
    noises = [v.strip() for v in args.noise.split(",") if v.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    base = {"command": "python bench/audit.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "n": args.n, "folds": args.folds, "machine": f"{os.cpu_count()} cores", "train_faces": None,
            "train_config": str(Path(args.train_config).relative_to(PROJECT))
            if Path(args.train_config).is_relative_to(PROJECT) else args.train_config}
    if args.tables_only:
        first = next(iter(sorted((work / "cells").glob("audit-*.json"))))
        base["version"] = json.loads(first.read_text())["version"]
        summary = collect(work, base, references(REFERENCES, base["version"]))
        write(summary, args.name, work)
        print(tables(summary))
        return 0
    version = prepare_small_version(work, n=args.n, crop_size=64, variants=VARIANTS,
                                    cache=os.environ.get("FER_CACHE"), source_options={"validation": True})
    base["version"] = version.version
    reference = references(REFERENCES, version.version)
    runs = work / "train-runs"
    config = Path(args.train_config)
    for noise in noises:                               # the audits and the cleaned runs first ...
        for seed in seeds:
            result = cell(work, f"audit-{noise}-s{seed}",
                          lambda: audit_cell(version, noise, seed, args.folds, args.jobs))
            write(collect(work, base, reference), args.name, work)
            if args.no_train:
                continue
            for part, variant in result["cleaned_variants"].items():
                cell(work, f"train-{noise}-{part}-s{seed}", lambda: train_cell(version, variant, seed, config, runs))
                write(collect(work, base, reference), args.name, work)
    if args.train_references and not args.no_train:   # ... then the noisy and clean references
        for seed in seeds:
            cell(work, f"train-clean-s{seed}", lambda: train_cell(version, "clean", seed, config, runs))
            for noise in noises:
                cell(work, f"train-{noise}-noisy-s{seed}", lambda: train_cell(version, noise, seed, config, runs))
            write(collect(work, base, reference), args.name, work)
    summary = collect(work, base, reference)
    write(summary, args.name, work)
    print(tables(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
