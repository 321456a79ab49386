"""Noisy-label variants of a dataset's training labels -> labels/<variant>.parquet.

Variant names (DESIGN.md): `clean`; `sym-0.30` (symmetric), `asym-0.20` (LA-Net asymmetric map),
`conf-0.20` (each class to its most confused class in a given confusion matrix), `trans` (a given
row-stochastic transition matrix); a seed suffix `-s3` when the seed is not 0.

Only the train split is noised; val/test labels are copied untouched. Counts are exact:
- sym: exactly round(r * n_train) training samples, chosen with the seed, each moved uniformly to one of
  the other C-1 classes (never to itself);
- asym / conf: exactly round(r * n_c) samples of each class c moved to its target class (LA-Net flips
  each class with probability r; exact per-class counts are the deterministic version of that);
- trans: class c's samples are split among targets in the proportions T[c] (largest-remainder rounding).
The realised transition matrix (rows: clean class, columns: noisy label) is logged and stored in the
file's metadata together with the counts.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.contract import tables as artifacts
from pipeline.contract.classes import CANONICAL_CLASSES, class_names
from pipeline.contract.errors import ConfigError, DataError, choices_message
from pipeline.contract.ranges import SEED_MAX, bounded
from pipeline.stages.base import Stage, register_stage

log = logging.getLogger(__name__)

STAGE_VERSION = "1.0.0"
KINDS: tuple[str, ...] = ("clean", "sym", "asym", "conf", "trans")
# LA-Net appendix: the asymmetric map between canonical class names.
LANET_ASYM_MAP: dict[str, str] = {
    "anger": "disgust", "disgust": "anger", "fear": "surprise", "happiness": "neutral",
    "sadness": "neutral", "surprise": "anger", "neutral": "sadness", "contempt": "neutral",
}
_NAME = re.compile(r"^(?:(?P<clean>clean)|(?P<kind>sym|asym|conf)-(?P<rate>\d+(?:\.\d+)?)|(?P<trans>trans))"
                   r"(?:-s(?P<seed>\d+))?$")
_ROW_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class NoiseVariant:
    """One noisy-label variant; `name` is its canonical file name stem."""

    kind: str = "clean"
    rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(choices_message("noise kind", self.kind, KINDS))
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"noise rate must be within [0, 1], got {self.rate!r} for kind {self.kind!r}")
        if self.seed < 0:
            raise ConfigError(f"noise seed must be >= 0, got {self.seed}")

    @property
    def name(self) -> str:
        if self.kind == "clean":
            return "clean"
        stem = "trans" if self.kind == "trans" else f"{self.kind}-{_format_rate(self.rate)}"
        return stem if self.seed == 0 else f"{stem}-s{self.seed}"


def _format_rate(rate: float) -> str:
    text = f"{rate:.2f}"
    return text if float(text) == rate else f"{rate:.6f}".rstrip("0")


def parse_variant(name: str) -> NoiseVariant:
    """'clean' | 'sym-0.30' | 'asym-0.20-s3' | 'conf-0.10' | 'trans-s1' -> NoiseVariant."""
    match = _NAME.match(name.strip())
    if not match:
        raise ConfigError(f"cannot parse noise variant {name!r}; expected clean, sym-<rate>, asym-<rate>, "
                          f"conf-<rate> or trans, each with an optional -s<seed> (e.g. sym-0.30, asym-0.20-s3)")
    seed = int(match["seed"] or 0)
    if match["clean"]:
        if seed:
            raise ConfigError(f"noise variant {name!r}: 'clean' takes no seed")
        return NoiseVariant("clean")
    if match["trans"]:
        return NoiseVariant("trans", 0.0, seed)
    return NoiseVariant(match["kind"], float(match["rate"]), seed)


@dataclass(frozen=True)
class NoiseConfig:
    """The default variant set: every kind x rate x seed, plus `clean`."""

    kinds: tuple[str, ...] = ("sym", "asym")
    rates: tuple[float, ...] = bounded((0.1, 0.2, 0.3), 0, 1)
    seeds: tuple[int, ...] = bounded((0, 1, 2, 3, 4), 0, SEED_MAX)
    include_clean: bool = True


def variant_names(config: NoiseConfig = NoiseConfig()) -> list[str]:
    """Names of the configured variant set, in a stable order."""
    names = ["clean"] if config.include_clean else []
    for kind in config.kinds:
        if kind == "trans":
            names += [NoiseVariant("trans", 0.0, s).name for s in config.seeds]
        else:
            names += [NoiseVariant(kind, r, s).name for r in config.rates for s in config.seeds]
    return names


# --- class maps and matrices ----------------------------------------------------------------------

def asymmetric_targets(num_classes: int) -> np.ndarray:
    """[C] target class of each class under the LA-Net map (7 or 8 classes)."""
    names = class_names(num_classes)
    return np.array([names.index(LANET_ASYM_MAP[name]) for name in names], dtype=np.int64)


def confusion_targets(confusion: np.ndarray, num_classes: int) -> np.ndarray:
    """[C] most confused other class per row of a confusion matrix (rows: true class); -1 if none."""
    matrix = _square_matrix(confusion, num_classes, "confusion matrix")
    if (matrix < 0).any():
        raise ConfigError("confusion matrix entries must be >= 0")
    off = matrix.copy()
    np.fill_diagonal(off, -np.inf)
    targets = np.argmax(off, axis=1)                       # first (lowest) index on ties
    targets[off.max(axis=1) <= 0] = -1
    return targets


def check_transition(transition: np.ndarray, num_classes: int) -> np.ndarray:
    """A [C, C] row-stochastic matrix (rows: clean class) or ConfigError naming the bad rows."""
    matrix = _square_matrix(transition, num_classes, "transition matrix")
    if (matrix < 0).any():
        raise ConfigError("transition matrix entries must be >= 0")
    sums = matrix.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _ROW_SUM_TOLERANCE)
    if len(bad):
        detail = ", ".join(f"row {i} ({CANONICAL_CLASSES[i]}) sums to {sums[i]:.6g}" for i in bad)
        raise ConfigError(f"transition matrix rows must sum to 1: {detail}")
    return matrix


def _square_matrix(value: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    matrix = np.asarray(value, dtype=np.float64)
    if matrix.shape != (num_classes, num_classes):
        raise ConfigError(f"{what} must be {num_classes}x{num_classes} for {num_classes} classes, "
                          f"got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ConfigError(f"{what} holds NaN or inf")
    return matrix


def _matrix_digest(matrix: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(matrix, dtype=np.float64).tobytes(), digest_size=8).hexdigest()


# --- making a variant ----------------------------------------------------------------------------------

def make_noisy_labels(samples: pa.Table, variant: str | NoiseVariant, num_classes: int,
                      transition: np.ndarray | None = None,
                      confusion: np.ndarray | None = None) -> tuple[pa.Table, dict]:
    """samples (sample_id, split, label) -> (labels table in LABELS_SCHEMA, info for the file metadata).

    `transition` is needed by 'trans' variants and `confusion` by 'conf' variants.
    """
    variant = parse_variant(variant) if isinstance(variant, str) else variant
    class_names(num_classes)  # validates 7 | 8
    artifacts.check_columns(samples, ["sample_id", "split", "label"], "samples table for noise")
    ids = samples.column("sample_id").to_numpy().astype(np.int64)
    clean = samples.column("label").fill_null(-1).to_numpy().astype(np.int64)        # [N]
    train = np.asarray(samples.column("split").to_numpy(zero_copy_only=False) == "train")
    bad = train & ((clean < 0) | (clean >= num_classes))
    if bad.any():
        shown = ", ".join(str(i) for i in ids[bad][:20])
        raise DataError(f"{int(bad.sum())} training samples have no label in 0..{num_classes - 1} "
                        f"(unlabelled, or contempt in a 7-class set); sample_ids [{shown}]")
    rng = np.random.default_rng(variant.seed)
    noisy = clean.copy()
    train_rows = np.flatnonzero(train)
    extra: dict = {}
    if variant.kind == "sym":
        _flip_symmetric(noisy, train_rows, variant.rate, num_classes, rng)
    elif variant.kind in ("asym", "conf"):
        if variant.kind == "conf" and confusion is None:
            raise ConfigError(f"variant {variant.name!r} needs a confusion matrix")
        targets = (asymmetric_targets(num_classes) if variant.kind == "asym"
                   else confusion_targets(confusion, num_classes))
        _flip_to_targets(noisy, train_rows, variant.rate, targets, rng)
        extra["target_map"] = {CANONICAL_CLASSES[c]: (CANONICAL_CLASSES[t] if t >= 0 else None)
                               for c, t in enumerate(targets)}
    elif variant.kind == "trans":
        if transition is None:
            raise ConfigError(f"variant {variant.name!r} needs a transition matrix")
        matrix = check_transition(transition, num_classes)
        _apply_transition(noisy, train_rows, matrix, rng)
        extra.update(given_transition=matrix.tolist(), transition_digest=_matrix_digest(matrix))
    info = _noise_info(variant, num_classes, clean[train_rows], noisy[train_rows], extra)
    log.info("noise variant %s: %d of %d training labels flipped (%.4f)\n%s", variant.name,
             info["n_flipped"], info["n_train"], info["realised_rate"],
             format_transition(np.array(info["realised_transition"]), num_classes))
    return artifacts.labels_table(ids, noisy, clean), info


def _flip_symmetric(labels: np.ndarray, rows: np.ndarray, rate: float, num_classes: int,
                    rng: np.random.Generator) -> None:
    """Exactly round(rate * len(rows)) rows, each moved to a uniformly drawn *other* class (in place)."""
    count = int(np.floor(rate * len(rows) + 0.5))
    chosen = np.sort(rng.choice(rows, size=count, replace=False))
    offsets = rng.integers(1, num_classes, size=count)                               # 1..C-1
    labels[chosen] = (labels[chosen] + offsets) % num_classes


def _flip_to_targets(labels: np.ndarray, rows: np.ndarray, rate: float, targets: np.ndarray,
                     rng: np.random.Generator) -> None:
    """Per class c: exactly round(rate * n_c) of its rows moved to targets[c] (in place; -1: none)."""
    clean = labels[rows].copy()
    for c, target in enumerate(targets):
        members = rows[clean == c]
        if target < 0 or target == c or not len(members):
            continue
        count = int(np.floor(rate * len(members) + 0.5))
        labels[np.sort(rng.choice(members, size=count, replace=False))] = target


def _apply_transition(labels: np.ndarray, rows: np.ndarray, matrix: np.ndarray,
                      rng: np.random.Generator) -> None:
    """Per class c: its rows, shuffled, are split among targets in the proportions matrix[c]."""
    clean = labels[rows].copy()
    for c in range(matrix.shape[0]):
        members = rng.permutation(rows[clean == c])
        counts = _largest_remainder(matrix[c] * len(members))
        labels[members] = np.repeat(np.arange(matrix.shape[1]), counts)


def _largest_remainder(expected: np.ndarray) -> np.ndarray:
    """Integer counts summing to round(sum(expected)), each floor(e) or floor(e)+1."""
    floors = np.floor(expected).astype(np.int64)
    missing = round(float(expected.sum())) - int(floors.sum())
    order = np.argsort(-(expected - floors), kind="stable")
    floors[order[:missing]] += 1
    return floors


def realised_transition(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts [C, C] int64, row-normalised [C, C] float64); rows: clean class, columns: noisy label."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (clean, noisy), 1)
    totals = counts.sum(axis=1, keepdims=True)
    return counts, counts / np.maximum(totals, 1)


def _noise_info(variant: NoiseVariant, num_classes: int, clean: np.ndarray, noisy: np.ndarray,
                extra: dict) -> dict:
    counts, matrix = realised_transition(clean, noisy, num_classes)
    flipped = int((clean != noisy).sum())
    return {
        "variant": variant.name, "kind": variant.kind, "rate": variant.rate, "seed": variant.seed,
        "num_classes": num_classes, "class_names": list(class_names(num_classes)),
        "n_train": len(clean), "n_flipped": flipped,
        "realised_rate": flipped / max(1, len(clean)),
        "transition_counts": counts.tolist(), "realised_transition": np.round(matrix, 6).tolist(),
        "stage_version": STAGE_VERSION, **extra,
    }


def format_transition(matrix: np.ndarray, num_classes: int) -> str:
    """A readable [C, C] transition table (rows: clean class, columns: noisy label)."""
    names = class_names(num_classes)
    lines = ["clean\\noisy " + " ".join(f"{n:>9}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:>11} " + " ".join(f"{v:9.3f}" for v in row))
    return "\n".join(lines)


# --- writing --------------------------------------------------------------------------------------------

def noisy_labels_path(labels_dir: str | Path, variant: str | NoiseVariant) -> Path:
    variant = parse_variant(variant) if isinstance(variant, str) else variant
    return Path(labels_dir) / f"{variant.name}.parquet"


def write_noisy_labels(labels_dir: str | Path, table: pa.Table, info: dict) -> Path:
    """Write labels/<variant>.parquet atomically with `info` (incl. the realised matrix) as metadata."""
    return artifacts.write_table(noisy_labels_path(labels_dir, info["variant"]), table, info)


def write_variant_set(labels_dir: str | Path, samples: pa.Table, variants: Sequence[str] | NoiseConfig,
                      num_classes: int, transition: np.ndarray | None = None,
                      confusion: np.ndarray | None = None) -> dict[str, Path]:
    """Make and write every variant (names, or a NoiseConfig's set) -> {name: path}."""
    names = variant_names(variants) if isinstance(variants, NoiseConfig) else list(variants)
    parsed = [parse_variant(n) for n in names]   # all names and matrices checked before any work
    if transition is not None:
        check_transition(transition, num_classes)
    lacking = [v.name for v in parsed if (v.kind == "trans" and transition is None)
               or (v.kind == "conf" and confusion is None)]
    if lacking:
        raise ConfigError(f"variants {lacking} need a transition matrix ('trans') or a confusion matrix ('conf')")
    out = {}
    for variant in parsed:
        table, info = make_noisy_labels(samples, variant, num_classes, transition, confusion)
        out[variant.name] = write_noisy_labels(labels_dir, table, info)
    return out


# --- the registered stage ----------------------------------------------------------------------------------

def resolve_variants(fields: dict, spec=None) -> tuple[str, ...]:
    """noise section: an explicit `variants` list, or NoiseConfig fields (kinds x rates x seeds)."""
    from pipeline.contract.config import build_dataclass, coerce

    fields = dict(fields)
    if "variants" in fields:
        names = list(coerce(fields.pop("variants"), tuple[str, ...], "noise.variants"))
        if fields:
            raise ConfigError(f"noise: give either variants or {sorted(fields)}, not both")
        if "clean" not in names:
            names.insert(0, "clean")
    else:
        names = variant_names(build_dataclass(NoiseConfig, fields, "noise"))
    return tuple(parse_variant(n).name for n in names)


def fingerprint_params(variants: tuple[str, ...]) -> dict:
    return {"variants": list(variants)}


def write_noise(version_dir: Path, variants: tuple[str, ...], num_classes: int) -> list[str]:
    """Every variant of the version's training labels -> labels/<variant>.parquet; their names, sorted."""
    samples = artifacts.read_table(Path(version_dir) / artifacts.SAMPLES, columns=["sample_id", "split", "label"])
    return sorted(write_variant_set(Path(version_dir) / artifacts.LABELS_DIR, samples, list(variants), num_classes))


def noise_calls(version_dir: Path, variants: tuple[str, ...], spec) -> dict:
    return {"noise": partial(write_noise, version_dir, variants, spec.num_classes)}


def summarise(results: dict) -> tuple[list[str], dict]:
    return results["noise"], {}


def _report() -> list:
    from pipeline.report import sections

    return [("noise", "Noisy-label variants", sections.noise_section)]


PREPARE_STAGE = register_stage(Stage(
    name="noise", version=STAGE_VERSION, config=NoiseConfig, writes=(artifacts.LABELS_DIR,),
    resolve=resolve_variants, params=fingerprint_params, calls=noise_calls, summarise=summarise, report=_report))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: write noisy-label variants of a version's samples.parquet and print their transition matrices."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("variants", nargs="*", help="variant names; default: the NoiseConfig() set")
    parser.add_argument("--num-classes", type=int, default=7)
    args = parser.parse_args(argv)
    samples = artifacts.read_table(args.version_dir / artifacts.SAMPLES, columns=["sample_id", "split", "label"])
    paths = write_variant_set(args.version_dir / artifacts.LABELS_DIR, samples,
                              args.variants or NoiseConfig(), args.num_classes)
    for name, path in paths.items():
        info = artifacts.read_metadata(path)
        print(f"{name}: {info['n_flipped']}/{info['n_train']} flipped -> {path}")
        print(format_transition(np.array(info["realised_transition"]), args.num_classes))


if __name__ == "__main__":
    main()
