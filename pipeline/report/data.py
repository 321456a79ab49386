"""What every report section reads about a version: identity, classes and the samples' split and label."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from pipeline.contract.classes import SPLITS, class_names
from pipeline.contract.errors import ArtifactError
from pipeline.contract.tables import MANIFEST, SAMPLES, read_metadata, read_table


def labels_lookup(labels_by_id: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Labels of `ids` (any shape) from a by-id array; -1 for ids outside it."""
    ids = np.asarray(ids, dtype=np.int64)
    inside = (ids >= 0) & (ids < len(labels_by_id))
    return np.where(inside, labels_by_id[np.clip(ids, 0, max(len(labels_by_id) - 1, 0))], -1)


@dataclass(frozen=True)
class VersionData:
    """What every section needs about a version: identity, classes and the samples' split/label."""

    directory: Path
    dataset: str
    version: str
    classes: tuple[str, ...]
    samples: pd.DataFrame        # sample_id, split, label (canonical clean label)
    samples_metadata: dict
    manifest: dict

    def labels_by_id(self) -> np.ndarray:
        """[max sample_id + 1] int64 clean label per sample id, -1 where no sample has that id."""
        ids = self.samples["sample_id"].to_numpy(np.int64)
        out = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
        out[ids] = self.samples["label"].to_numpy(np.int64)
        return out

    def labels_of(self, sample_ids: np.ndarray) -> np.ndarray:
        """Clean labels of `sample_ids` (-1 for ids with no sample)."""
        return labels_lookup(self.labels_by_id(), sample_ids)

    def split_by_id(self) -> np.ndarray:
        """[max sample_id + 1] object array of split names ('' where no sample has that id)."""
        ids = self.samples["sample_id"].to_numpy(np.int64)
        out = np.full(int(ids.max()) + 1 if len(ids) else 0, "", dtype=object)
        out[ids] = self.samples["split"].to_numpy(object)
        return out

    def split_order(self) -> list[str]:
        present = list(dict.fromkeys(self.samples["split"].tolist()))
        return [s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)


def _class_names_for(metadata: dict, labels: np.ndarray) -> tuple[str, ...]:
    names = metadata.get("classes")
    if isinstance(names, list) and names and (not len(labels) or labels.max() < len(names)):
        return tuple(str(n) for n in names)
    return class_names(8 if len(labels) and labels.max() >= 7 else 7)


def load_version(version_dir: str | Path) -> VersionData:
    """Read the version's identity, classes and samples (split, label); raises when samples.parquet is missing."""
    directory = Path(version_dir)
    samples_path = directory / SAMPLES
    if not samples_path.is_file():
        raise ArtifactError(f"cannot report on {directory}: {SAMPLES} is missing (run `make prepare` first)")
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    metadata = read_metadata(samples_path)
    table = read_table(samples_path, ["sample_id", "split", "label"])
    table = table.set_column(2, "label", pc.fill_null(table.column("label"), -1))    # unlabelled -> -1
    samples = table.to_pandas()
    labels = samples["label"].to_numpy(np.int64)
    dataset = manifest.get("dataset") or metadata.get("dataset") or directory.parent.name
    return VersionData(directory=directory, dataset=str(dataset), version=str(manifest.get("version") or directory.name),
                       classes=_class_names_for(metadata, labels), samples=samples,
                       samples_metadata=metadata, manifest=manifest)
