"""Label sets an audit writes beside runs, and how the trainer finds them by name.

An audit never writes into the version. Its label sets live in `<audit dir>/labels/<part>.parquet` (the
contract's labels table: sample_id, label, clean_label, flipped) and are named

    <variant>+audit-<hash>-<part>      e.g. sym-0.30+audit-1f2e3d4c5b6a-relabel

where <hash> is the audit's config hash and <part> is
    drop       the audited variant with every flagged training label left out;
    relabel    the audited variant with every flagged training label replaced by the audit's suggestion;
    fold<k>    the audited variant with fold k held out (what fold k's run trains on).
A left-out training face has label WITHHELD (-1), outside the class set, so the data layer's usability rule
(training.data.PreparedVersion.split_data) keeps it out of the split. `training.data` resolves these names
through `read_audit_labels`, so `make train NOISE=sym-0.30+audit-<hash>-relabel` trains on a cleaned variant
like on any other, and the run's `noise` (config.yaml, results.json) names the audit it came from.
Audits are found under `$FER_RUNS/audits` (default: the project's `runs/audits`).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from pipeline.contract import tables as art
from pipeline.contract.errors import ArtifactError
from pipeline.contract.lock import PROJECT_ROOT
from pipeline.contract.names import plain_name

log = logging.getLogger(__name__)

WITHHELD = -1                       # label of a training face a label set leaves out
CLEANED = ("drop", "relabel")       # the cleaned variants every audit writes
AUDIT_VARIANT = re.compile(r"^(?P<base>.+)\+audit-(?P<hash>[0-9a-f]{12})-(?P<part>drop|relabel|fold[0-9]+)$")
LABELS = "labels"
_ANNOUNCED: set[tuple[str, str]] = set()   # (directory, variant) already logged in this process


def runs_root() -> Path:
    """Where runs (and audits, under audits/) live: $FER_RUNS, else the project's runs/ (as training.engine)."""
    env = os.environ.get("FER_RUNS")
    return Path(env) if env else PROJECT_ROOT / "runs"


def audit_directory(dataset: str, version: str, variant: str, audit_hash: str) -> Path:
    """<runs root>/audits/<dataset>/<version>/<variant>/<audit hash>/ (each part a checked plain name)."""
    parts = [plain_name("dataset", dataset), plain_name("version id", version), plain_name("variant", variant),
             plain_name("audit hash", audit_hash)]
    return runs_root().joinpath("audits", *parts)


def variant_name(base: str, audit_hash: str, part: str) -> str:
    """The name a label set of an audit is trained on: '<base>+audit-<hash>-<part>'."""
    name = plain_name("variant", f"{base}+audit-{audit_hash}-{part}")
    if not AUDIT_VARIANT.match(name):
        raise ArtifactError(f"{name!r} is not an audit variant name (<variant>+audit-<12 hex>-drop|relabel|fold<k>)")
    return name


def parse_variant(name: str) -> tuple[str, str, str] | None:
    """(audited variant, audit hash, part) of an audit variant name, or None for any other name."""
    match = AUDIT_VARIANT.match(name or "")
    return (match["base"], match["hash"], match["part"]) if match else None


def write_labels(directory: Path, part: str, sample_id: np.ndarray, label: np.ndarray, clean_label: np.ndarray,
                 metadata: dict) -> Path:
    """labels/<part>.parquet of an audit: the contract's labels table; left-out faces carry WITHHELD."""
    return art.write_table(directory / LABELS / f"{plain_name('label set', part)}.parquet",
                           art.labels_table(sample_id, label, clean_label), metadata)


def read_audit_labels(version, variant: str) -> tuple[np.ndarray, np.ndarray] | None:
    """([N] label, [N] clean label) of an audit variant of `version` (a PreparedVersion); None for other names.

    Samples the label set does not list keep the version's clean label (as for a prepared variant);
    left-out training faces carry WITHHELD, which the split's usability rule leaves out.
    """
    parsed = parse_variant(variant)
    if parsed is None:
        return None
    base, audit_hash, part = parsed
    directory = audit_directory(version.dataset, version.version, base, audit_hash)
    path = directory / LABELS / f"{part}.parquet"
    if not path.is_file():
        raise ArtifactError(f"label variant {variant!r} names audit {audit_hash} of {version.dataset} version "
                            f"{version.version} / {base}, but {path} does not exist; run "
                            f"`make audit DATASET={version.dataset} NOISE={base}` (audits are read from "
                            f"$FER_RUNS/audits, now {runs_root() / 'audits'})")
    table = art.read_table(path, ["sample_id", "label", "clean_label"])
    ids = table.column("sample_id").to_numpy()
    if ids.size and (ids.min() < 0 or ids.max() >= version.num_samples):
        raise ArtifactError(f"{path}: sample_id outside 0..{version.num_samples - 1}; it belongs to another version")
    label, clean = version.label.copy(), version.label.copy()
    label[ids] = table.column("label").to_numpy(zero_copy_only=False)
    clean[ids] = table.column("clean_label").to_numpy(zero_copy_only=False)
    if (str(directory), variant) not in _ANNOUNCED:
        _ANNOUNCED.add((str(directory), variant))
        log.info("label variant %s comes from the audit at %s (%d training faces left out)", variant, directory,
                 int((label[ids] == WITHHELD).sum()))
    return label, clean
