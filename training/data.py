"""Read a prepared dataset version (the artefact contract in DESIGN.md) into arrays, once.

`PreparedVersion.open(dataset, version)` loads samples, the crop store (a read-only uint8 memmap, never
decoded), landmarks, action units, valence-arousal, votes and, on demand, label variants and graphs.
`split_data(split, variant)` gives the usable rows of one split (valid crop, label inside the class set);
`train_graph(space, split)` maps a graph's sample-id neighbours to positions in that split.

Rule for graph neighbours that are not usable training samples (other split, invalid crop, label
outside the class set, or the sample itself): they are dropped, the remaining ones keep their order
(nearest first) and move to the front, and the freed slots at the end hold index -1 with similarity 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.contract import graphs, integrity
from pipeline.contract import tables as art
from pipeline.contract.crops import open_crops
from pipeline.contract.names import plain_name
from pipeline.contract.errors import ArtifactError

log = logging.getLogger(__name__)

DATA_VERSION = "1.0"


@dataclass(frozen=True)
class SplitData:
    """The usable samples of one split under one label variant; row i is 'index' i of the split."""

    name: str
    variant: str
    sample_id: np.ndarray    # [n] int64 global sample ids (sorted)
    label: np.ndarray        # [n] int64 labels of the variant (noisy for train)
    clean_label: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.sample_id)

    @property
    def flipped(self) -> np.ndarray:
        """[n] bool: label differs from the clean label."""
        return self.label != self.clean_label

    def class_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.label, minlength=num_classes)


def _align_rows(table, column: str, n: int, fill: float = np.nan) -> np.ndarray:
    """A column of a sample_id-keyed table scattered into dense [n, ...] rows; missing rows get `fill`."""
    ids = table.column("sample_id").to_numpy()
    col = table.column(column)
    import pyarrow as pa
    values = art.vectors_to_numpy(col, fill) if pa.types.is_fixed_size_list(col.type) else \
        col.to_numpy(zero_copy_only=False)
    out = np.full((n,) + values.shape[1:], fill, dtype=np.float32 if values.dtype.kind == "f" else values.dtype)
    keep = (ids >= 0) & (ids < n)
    out[ids[keep]] = values[keep]
    return out


@dataclass
class PreparedVersion:
    """One prepared version, loaded. Per-sample arrays are indexed by sample_id (0..N-1)."""

    dataset: str
    version: str
    directory: Path
    lock: dict
    num_classes: int
    split: np.ndarray            # [N] str
    label: np.ndarray            # [N] int64 clean labels from samples.parquet (-1: none)
    valid: np.ndarray            # [N] bool, crop row holds a real face
    crops: np.ndarray            # [N, S, S, 3] uint8 memmap
    landmarks: np.ndarray | None  # [N, P, 2] float32 crop pixels (NaN where missing)
    aus: np.ndarray | None       # [N, 17] float32 AU intensities (NaN where missing)
    va: np.ndarray | None        # [N, 2] float32 valence, arousal
    votes: np.ndarray | None     # [N, C] float32 annotator/true label distribution
    files: integrity.VersionFiles | None = None   # the checked folder: later reads (labels, graphs) go through it

    @classmethod
    def open(cls, dataset: str, version: str = "latest", artifacts_root: str | Path | None = None,
             manifests_root: str | Path | None = None) -> PreparedVersion:
        """Load `<artifacts_root>/<dataset>/<version>/`; 'latest' follows data_manifests/versions/<dataset>/latest.

        Opened through the contract (pipeline.contract.integrity): the lock is checked, every output is
        found at its recorded size, and each table read is range-checked and hash-checked against the lock;
        a damaged version is refused in one line pointing at `make verify`.
        """
        from pipeline.contract.lock import manifests_root as default_manifests

        manifests = Path(manifests_root) if manifests_root else default_manifests()
        try:
            files = integrity.open_version(dataset, version, artifacts_root, manifests)
        except ArtifactError as exc:
            text = str(exc)
            if "make verify" in text:     # a damaged version: the line already says what to do
                raise
            hint = "" if "make prepare" in text else f"; prepare it with `make prepare DATASET={dataset}`"
            raise ArtifactError(f"{text}{hint} (manifests root: {manifests}; set FER_MANIFESTS to use another)") \
                from exc
        return cls._load(files)

    @classmethod
    def _load(cls, files: integrity.VersionFiles) -> PreparedVersion:
        lock, directory = files.lock, files.directory
        num_classes = files.num_classes or cls._num_classes_unrecorded(files)
        samples = files.read(art.SAMPLES, art.read_table, integrity.check_samples(num_classes))
        n = samples.num_rows
        ids = samples.column("sample_id").to_numpy()
        split = np.empty(n, dtype=object)
        split[ids] = np.asarray(samples.column("split").to_pylist(), dtype=object)
        label = np.full(n, -1, np.int64)
        label[ids] = samples.column("label").to_numpy(zero_copy_only=False)
        crops, valid = integrity.open_checked_crops(files, n)
        va = votes = None
        if "valence" in samples.column_names and "arousal" in samples.column_names:
            va = np.stack([_align_rows(samples, "valence", n), _align_rows(samples, "arousal", n)], 1)
        if "votes" in samples.column_names:
            votes = _align_rows(samples, "votes", n)
        landmarks = aus = None
        if files.has(art.LANDMARKS):
            table = files.read(art.LANDMARKS, lambda p: art.read_table(p, ["sample_id", "points"]),
                               integrity.check_vectors("points", n, valid))
            landmarks = _align_rows(table, "points", n).reshape(n, -1, 2)  # [N, P, 2]
        if files.has(art.ACTION_UNITS):
            table = files.read(art.ACTION_UNITS, lambda p: art.read_table(p, ["sample_id", "intensity"]),
                               integrity.check_vectors("intensity", n, valid))
            aus = _align_rows(table, "intensity", n)
        log.info("opened %s version %s: %d samples, %d classes, crops %s", files.dataset, files.version, n,
                 num_classes, crops.shape[1:])
        return cls(files.dataset, files.version, directory, lock, num_classes, split, label, valid, crops,
                   landmarks, aus, va, votes, files)

    @staticmethod
    def _num_classes_unrecorded(files: integrity.VersionFiles) -> int:
        """An older lock without `num_classes`: the spec's, the table's metadata, else 7 or 8 by the labels."""
        spec = files.lock.get("spec") or {}
        if isinstance(spec, dict) and spec.get("num_classes") in (7, 8):
            return int(spec["num_classes"])
        metadata = art.read_metadata(files.present(art.SAMPLES))
        if metadata.get("num_classes") in (7, 8):
            return int(metadata["num_classes"])
        labels = art.read_table(files.present(art.SAMPLES), ["label"]).column("label").to_numpy(zero_copy_only=False)
        return 8 if labels.max(initial=0) >= 7 else 7

    def __getstate__(self) -> dict:
        """Pickle without the crop memmap (a pickled memmap is a full in-memory copy); reopened on load."""
        state = dict(self.__dict__)
        state["crops"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.crops = open_crops(self.directory / art.CROPS_DIR)

    # --- what is prepared ---
    @property
    def crop_size(self) -> int:
        return int(self.crops.shape[1])

    @property
    def num_samples(self) -> int:
        return int(self.crops.shape[0])

    @property
    def num_landmarks(self) -> int:
        return 0 if self.landmarks is None else int(self.landmarks.shape[1])

    def label_variants(self) -> list[str]:
        return sorted(p.stem for p in (self.directory / art.LABELS_DIR).glob("*.parquet"))

    def graph_spaces(self) -> list[str]:
        return sorted(p.stem for p in (self.directory / art.GRAPHS_DIR).glob("*.parquet"))

    # --- labels and splits ---
    def labels(self, variant: str) -> tuple[np.ndarray, np.ndarray]:
        """([N] label, [N] clean label) of a variant; samples outside the variant keep their clean label."""
        plain_name("noise variant", variant)
        name = f"{art.LABELS_DIR}/{variant}.parquet"
        path = self.directory / name
        if not path.is_file():
            audited = self._audit_labels(variant)
            if audited is not None:
                return audited
            if variant == "clean":
                return self.label.copy(), self.label.copy()
            prepared = ", ".join(self.label_variants()) or "none"
            raise ArtifactError(
                f"noise variant {variant!r} is not prepared for {self.dataset} version {self.version}; "
                f"prepared variants: {prepared}. Add it to the noise variants of the prepare config and run "
                f"`make prepare DATASET={self.dataset}`")
        table = self._read(name, lambda p: art.read_table(p, ["sample_id", "label", "clean_label"]),
                           integrity.check_label_variant(self.num_samples, self.num_classes, self.label))
        ids = table.column("sample_id").to_numpy()
        label, clean = self.label.copy(), self.label.copy()
        label[ids] = table.column("label").to_numpy(zero_copy_only=False)
        clean[ids] = table.column("clean_label").to_numpy(zero_copy_only=False)
        return label, clean

    def _audit_labels(self, variant: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A label set written by a label audit (`<variant>+audit-<hash>-drop|relabel|fold<k>`, kept beside
        runs, never in the version: training.audit.variants); None for any other name."""
        from training.audit.variants import read_audit_labels

        return read_audit_labels(self, variant)

    def splits(self) -> list[str]:
        return sorted(set(self.split.tolist()))

    def split_data(self, split: str, variant: str = "clean") -> SplitData:
        """Usable rows of `split`: valid crop and a label inside the class set."""
        label, clean = self.labels(variant)
        usable = (self.split == split) & self.valid & (clean >= 0) & (clean < self.num_classes) & \
                 (label >= 0) & (label < self.num_classes)
        ids = np.flatnonzero(usable).astype(np.int64)
        if len(ids) == 0:
            raise ArtifactError(f"split {split!r} of {self.dataset} version {self.version} has no usable samples; "
                                f"splits present: {', '.join(self.splits())}")
        return SplitData(split, variant, ids, label[ids].astype(np.int64), clean[ids].astype(np.int64))

    def eval_split(self, variant: str = "clean") -> SplitData:
        """The test split, or 'val' when the dataset has no test split."""
        for name in ("test", "val"):
            if name in self.splits():
                return self.split_data(name, variant)
        raise ArtifactError(f"{self.dataset} version {self.version} has neither a test nor a val split")

    # --- graphs ---
    def graph(self, space: str) -> graphs.GraphArrays:
        plain_name("graph space", space)
        name = f"{art.GRAPHS_DIR}/{space}.parquet"
        if not (self.directory / name).is_file():
            raise ArtifactError(f"graph {space!r} is not prepared for {self.dataset} version {self.version}; "
                                f"prepared graphs: {', '.join(self.graph_spaces()) or 'none'}")
        return self._read(name, lambda p: graphs.read_graph(p, with_distances=False),
                          integrity.check_graph(self.num_samples))

    def _read(self, name: str, load, check):
        """Through the checked folder when this version was opened by `open` (else as it is)."""
        if self.files is None:
            return load(self.directory / name)
        return self.files.read(name, load, check)

    def train_graph(self, space: str, split: SplitData) -> tuple[np.ndarray, np.ndarray]:
        """([n, K] int64 neighbour positions in `split` or -1, [n, K] float32 similarity, 0 where -1)."""
        graph = self.graph(space)
        position = np.full(self.num_samples, -1, np.int64)
        position[split.sample_id] = np.arange(len(split))
        rows = np.full(self.num_samples, -1, np.int64)
        rows[graph.sample_id] = np.arange(len(graph.sample_id))
        missing = rows[split.sample_id] < 0
        if missing.any():
            raise ArtifactError(f"graph {space!r} has no row for {int(missing.sum())} {split.name} samples "
                                f"(e.g. sample_id {int(split.sample_id[missing][0])})")
        nbr_ids = graph.neighbors[rows[split.sample_id]]  # [n, K] sample ids
        sim = graph.similarity[rows[split.sample_id]].astype(np.float32)  # [n, K]
        in_range = (nbr_ids >= 0) & (nbr_ids < self.num_samples)
        nbr = np.where(in_range, position[np.clip(nbr_ids, 0, self.num_samples - 1)], -1)  # [n, K]
        nbr[nbr == np.arange(len(split))[:, None]] = -1  # never its own neighbour
        keep = nbr >= 0
        order = np.argsort(~keep, axis=1, kind="stable")  # usable first, original order kept
        nbr = np.take_along_axis(nbr, order, 1)
        sim = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(sim, order, 1), 0.0)
        return nbr, sim.astype(np.float32)
