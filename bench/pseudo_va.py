"""Pseudo valence-arousal end to end on the synthetic set: train, export, apply to withheld VA, measure; LDLVA on it.

    python bench/pseudo_va.py [--n 1500] [--apply-n 600] [--epochs 15] [--work /tmp/pseudo-va]

1. `source`: synthetic v2 (source seed 0) prepared by the real prepare, with its ground-truth valence-arousal.
2. The trainer's `va_regression` method on its train split (configs/tiny.yaml-like CPU recipe, `resnet_small`),
   exported as a TorchScript file (training.methods.va_regression.export_run).
3. `target`: another synthetic source (seed 1) prepared twice: plain (its ground truth) and with
   `pseudo_va.checkpoint=<file> pseudo_va.replace=true` (the truth withheld: replaced by pseudo values).
   RMSE and CCC of pseudo against true valence/arousal per split, and how often the `va` graph's neighbours share
   the centre's class with pseudo and with true VA.
4. RAF-DB- and FERPlus-shaped roots written from synthetic faces (seed 2; 100x100 aligned JPEGs with RAF-DB's
   label file; 48x48 grey pixels with ten-annotator votes in fer2013.csv / fer2013new.csv), prepared by their own
   adapters with the pseudo_va stage: the `va` graph exists and `ldlva` trains an epoch on each.
Writes bench/results/pseudo_va.json and prints it. Every prepare and run lives under --work.
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

log = logging.getLogger("bench.pseudo_va")
OUT = PROJECT / "bench" / "results" / "pseudo_va.json"
CPU = [("runtime.device", "cpu"), ("runtime.recipe_device", "cpu"), ("runtime.bf16", "false"),
       ("runtime.channels_last", "false"), ("runtime.progress", "false"), ("runtime.tensorboard", "false"),
       ("runtime.report", "false"), ("runtime.log_every", "20"), ("runtime.eval_every", "100"),
       ("data.num_workers", "0"), ("data.persistent_workers", "false"), ("data.pin_memory", "false")]
REGRESSOR = [("model.backbone", "resnet_small"), ("data.resize", "56"), ("data.image_size", "48"),
             ("data.random_crop", "true"), ("data.flip", "true"), ("data.color_jitter", "0.2"),
             ("data.erasing_p", "0.0"), ("batch_size", "32"), ("optim.name", "adam"), ("optim.lr", "2e-3"),
             ("schedule.name", "cosine"), ("method_config.va_loss", "mse+ccc")]
SMALL = ["align.detector=given", "landmarks.backend=provided", "graphs.backend=exact", "report=false",
         "max_workers=1", "noise.variants=[clean]"]


def prepare(dataset: str, options: list[str], root: str | None = None) -> dict:
    from pipeline.config import load_prepare_config
    from pipeline.prepare import run_prepare

    start = time.perf_counter()
    summary = run_prepare(load_prepare_config(None, options, dataset=dataset, root=root), progress=False)
    summary["seconds_total"] = round(time.perf_counter() - start, 1)
    log.info("prepared %s %s in %.0f s", dataset, summary["version"], summary["seconds_total"])
    return summary


def samples_va(version_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(split [N], label [N], va [N, 2] NaN where null, metadata) of a version's samples.parquet."""
    from pipeline.contract.tables import read_metadata, read_table

    path = Path(version_dir) / "samples.parquet"
    table = read_table(path, ["sample_id", "split", "label", "valence", "arousal"])
    va = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                   for c in ("valence", "arousal")], 1)                       # [N, 2]
    order = np.argsort(table.column("sample_id").to_numpy())
    split = np.asarray(table.column("split").to_pylist(), dtype=object)[order]
    label = table.column("label").to_numpy()[order]
    return split, label, va[order], read_metadata(path)


def graph_agreement(version_dir: str | Path, labels: np.ndarray) -> float:
    """Share of `va` graph neighbours (train split) whose class is the centre's."""
    from pipeline.contract.graphs import read_graph

    graph = read_graph(Path(version_dir) / "graphs" / "va.parquet", with_distances=False)
    nbr = graph.neighbors                                               # [n, K] sample ids
    ok = nbr >= 0
    same = labels[np.clip(nbr, 0, None)] == labels[graph.sample_id][:, None]
    return float(same[ok].mean())


def train_regressor(source: dict, work: Path, epochs: int, seed: int) -> dict:
    from training.config import resolve_config
    from training.engine import fit
    from training.methods.va_regression import export_run

    overrides = CPU + REGRESSOR + [("epochs", str(epochs)), ("runtime.seed", str(seed)),
                                   ("version", source["version"]), ("runtime.runs_root", str(work / "runs")),
                                   ("runtime.threads", os.environ.get("BENCH_THREADS", "2"))]
    config = resolve_config("va_regression", "synthetic", "clean", None, overrides)
    start = time.perf_counter()
    final = fit(config)
    seconds = time.perf_counter() - start
    exported = export_run(final["run_dir"], work / "va_regressor.pt")
    return {"train_seconds": round(seconds, 1), "epochs": epochs, "recipe": dict(REGRESSOR),
            "checkpoint_bytes": (work / "va_regressor.pt").stat().st_size,
            "test_metrics_on_source": exported["test_metrics"], "test_accuracy_expression": final["test_accuracy"]}


def measure_withheld(work: Path, checkpoint: Path, apply_n: int) -> dict:
    from training.methods.va_regression import va_metrics

    options = [*SMALL, f"source.n={apply_n}", "source.seed=1", "align.crop_size=64"]
    truth = prepare("synthetic", options)
    pseudo = prepare("synthetic", [*options, f"pseudo_va.checkpoint={checkpoint}", "pseudo_va.replace=true"])
    split, label, true_va, _ = samples_va(truth["path"])
    split_p, label_p, pseudo_va, meta = samples_va(pseudo["path"])
    assert (split == split_p).all() and (label == label_p).all(), "the two versions must hold the same samples"
    result = {"truth_version": truth["version"], "pseudo_version": pseudo["version"], "metadata_va": meta.get("va"),
              "checkpoint_hash": (meta.get("va_checkpoint") or {}).get("hash"),
              "pseudo_prepare_seconds": pseudo["seconds_total"]}
    for name in ("train", "test"):
        rows = split == name
        result[name] = va_metrics(pseudo_va[rows], true_va[rows])
    result["va_graph_label_agreement"] = {"pseudo": graph_agreement(pseudo["path"], label),
                                          "true": graph_agreement(truth["path"], label)}
    return result


def _synthetic_faces(apply_n: int, crop: int) -> tuple[dict, np.ndarray]:
    """A prepared synthetic version (seed 2) of `crop`-pixel crops: (summary, crops [N, crop, crop, 3])."""
    from pipeline.contract.crops import open_crops

    summary = prepare("synthetic", [*SMALL, f"source.n={apply_n}", "source.seed=2", f"align.crop_size={crop}"])
    return summary, np.asarray(open_crops(Path(summary["path"]) / "crops"))


def write_rafdb_root(root: Path, apply_n: int) -> Path:
    """RAF-DB basic layout (EmoLabel/list_patition_label.txt, 100x100 Image/aligned/*_aligned.jpg) of synthetic faces."""
    from PIL import Image

    from pipeline.specs import load_spec

    summary, crops = _synthetic_faces(apply_n, 100)
    split, label, _, _ = samples_va(summary["path"])
    native = {name: key for key, name in load_spec("rafdb").class_map.items()}
    classes = load_spec("synthetic").classes
    lines = []
    (root / "Image" / "aligned").mkdir(parents=True, exist_ok=True)
    for i in range(len(label)):
        name = f"{'train' if split[i] == 'train' else 'test'}_{i:05d}"
        Image.fromarray(crops[i]).save(root / "Image" / "aligned" / f"{name}_aligned.jpg", quality=92)
        lines.append(f"{name}.jpg {native[classes[label[i]]]}")
    (root / "EmoLabel").mkdir(exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def write_ferplus_root(root: Path, apply_n: int) -> Path:
    """FERPlus layout (fer2013.csv 48x48 grey pixels, fer2013new.csv ten votes) of synthetic faces and blends."""
    from PIL import Image

    from pipeline.contract.tables import read_table, vectors_to_numpy
    from pipeline.specs import load_spec

    summary, crops = _synthetic_faces(apply_n, 100)
    samples = read_table(Path(summary["path"]) / "samples.parquet", ["split", "votes"])
    split = samples.column("split").to_pylist()
    votes = vectors_to_numpy(samples.column("votes"))                  # [N, 7] true distributions
    classes = list(load_spec("synthetic").classes)
    columns = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    pixels_rows, label_rows = ["emotion,pixels,Usage"], [f"Usage,Image name,{','.join(columns)},unknown,NF"]
    for i, row in enumerate(crops):
        grey = np.asarray(Image.fromarray(row).convert("L").resize((48, 48), Image.BILINEAR))
        pixels_rows.append(f"0,{' '.join(map(str, grey.reshape(-1)))},{usage[split[i]]}")
        counts = _ten_votes(votes[i])
        per_column = [counts[classes.index(c)] if c in classes else 0 for c in columns]
        label_rows.append(f"{usage[split[i]]},fer{i:07d}.png,{','.join(map(str, per_column))},0,0")
    root.mkdir(parents=True, exist_ok=True)
    (root / "fer2013.csv").write_text("\n".join(pixels_rows) + "\n")
    (root / "fer2013new.csv").write_text("\n".join(label_rows) + "\n")
    return root


def _ten_votes(distribution: np.ndarray) -> np.ndarray:
    """Ten annotator votes from a distribution (largest remainder)."""
    expected = 10 * np.asarray(distribution, np.float64) / max(float(np.sum(distribution)), 1e-12)
    counts = np.floor(expected).astype(int)
    counts[np.argsort(-(expected - counts), kind="stable")[:10 - counts.sum()]] += 1
    return counts


def ldlva_on(dataset: str, root: Path, checkpoint: Path, work: Path) -> dict:
    """Prepare a RAF-DB/FERPlus-shaped root with pseudo-VA, then one epoch of ldlva on its va graph."""
    from training.config import resolve_config
    from training.engine import fit

    summary = prepare(dataset, ["graphs.backend=exact", "report=false", "max_workers=1", "align.crop_size=64",
                                "noise.variants=[sym-0.30]", f"pseudo_va.checkpoint={checkpoint}"], root=str(root))
    _, _, va, meta = samples_va(summary["path"])
    overrides = CPU + [("epochs", "1"), ("model.backbone", "tiny"), ("data.image_size", "56"),
                       ("data.groups_per_batch", "8"), ("data.au_neighbors", "4"), ("version", summary["version"]),
                       ("runtime.runs_root", str(work / "runs")), ("runtime.threads", "1")]
    config = resolve_config("ldlva", dataset, "sym-0.30", None, overrides)
    final = fit(config)
    graphs = sorted(p.stem for p in (Path(summary["path"]) / "graphs").glob("*.parquet"))
    return {"version": summary["version"], "graphs": graphs, "metadata_va": meta.get("va"),
            "pseudo_va_rows": int(np.isfinite(va).all(1).sum()), "samples": len(va),
            "ldlva_steps": final["step"], "ldlva_test_accuracy": final["test_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1500, help="samples of the source version (seed 0)")
    parser.add_argument("--apply-n", type=int, default=600, help="samples of the versions the regressor is applied to")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/fer-pseudo-va")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    work = Path(args.work)
    for key, sub in (("FER_ARTIFACTS", "artifacts"), ("FER_MANIFESTS", "manifests")):
        os.environ[key] = str(work / sub)
    os.environ.setdefault("FER_CACHE", str(work / "cache"))
    start = time.perf_counter()
    load = os.getloadavg()
    source = prepare("synthetic", [*SMALL, f"source.n={args.n}", "source.seed=0", "align.crop_size=64"])
    result = {"command": "python bench/pseudo_va.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "source_version": source["version"], "n": args.n, "apply_n": args.apply_n,
              "regressor": train_regressor(source, work, args.epochs, args.seed)}
    checkpoint = work / "va_regressor.pt"
    result["withheld"] = measure_withheld(work, checkpoint, args.apply_n)
    result["rafdb_shaped"] = ldlva_on("rafdb", write_rafdb_root(work / "rafdb", args.apply_n), checkpoint, work)
    result["ferplus_shaped"] = ldlva_on("ferplus", write_ferplus_root(work / "ferplus", args.apply_n), checkpoint, work)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["load_average_start_end"] = [round(load[0], 2), round(os.getloadavg()[0], 2)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
