"""One whole audit: folds -> out-of-fold probabilities -> signals -> audit.parquet, cleaned variants, report.

Outputs, in <runs root>/audits/<dataset>/<version id>/<variant>/<audit hash>/ (training.audit.variants):
    audit.yaml        the resolved audit options and the fold runs' resolved training config
    labels/fold<k>.parquet, runs/fold<k>/, oof/fold<k>.npz    the folds (label set, trainer run, predictions)
    audit.parquet     one row per audited training face: sample_id, given_label, suggested_label, every
                      score_<signal> and flag_<signal>, combined_score, flagged, rank (1 = most suspect),
                      and clean_label, flipped, fold, oof_probs, combined_probs
    labels/drop.parquet, labels/relabel.parquet    the cleaned variants (trainable by name)
    audit.json        per-signal numbers (AUROC and precision@n_flipped where the flips are known), the
                      combination's weights, counts, times
    report.html       the self-contained report (training.audit.report)
The version is only read.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from pipeline.contract import tables as art
from pipeline.contract.errors import ConfigError, choices_message
from pipeline.contract.graphs import graph_path
from training.audit import variants
from training.audit.config import AUDIT_VERSION, AuditConfig, audit_hash, training_config
from training.audit.folds import FoldJob, assign_folds, gather, run_folds
from training.audit.signals import compute_signals, read_graph_view, truth_metrics

log = logging.getLogger(__name__)


def graph_spaces(config: AuditConfig, version) -> list[str]:
    """The graph spaces scored: the configured ones (each must exist) or every space the version has."""
    have = version.graph_spaces()
    for space in config.graphs:
        if space not in have:
            raise ConfigError(choices_message(f"graph space of {config.dataset} version {version.version}",
                                              space, have or ["none: the version has no graphs"]))
    spaces = list(config.graphs) or have
    if not spaces:
        log.info("%s version %s has no graphs: the neighbour, outlier and near-duplicate signals are skipped",
                 config.dataset, version.version)
    return spaces


def fold_jobs(config: AuditConfig, version, train, fold: np.ndarray, directory: Path, digest: str) -> list[FoldJob]:
    """Write each fold's label set and resolve its run's config (the recipe, the fold variant, fixed paths)."""
    jobs = []
    for k in range(1, config.folds + 1):
        held = fold == k - 1
        label = np.where(held, variants.WITHHELD, train.label)
        variants.write_labels(directory, f"fold{k}", train.sample_id, label, train.clean_label,
                              {"audit": digest, "fold": k, "folds": config.folds, "audited_variant": config.noise})
        name = variants.variant_name(config.noise, digest, f"fold{k}")
        train_config = training_config(config, version.version, name, [
            ("runtime.runs_root", str(directory / "runs")), ("runtime.run_id", f"fold{k}")])
        jobs.append(FoldJob(k, config.noise, train_config.to_dict(), str(directory / "runs" / f"fold{k}"),
                            str(directory / "oof" / f"fold{k}.npz"), train.sample_id[held]))
    return jobs


def audit_table(train, fold: np.ndarray, oof: np.ndarray, signals) -> pa.Table:
    """audit.parquet's table: one row per audited face (see the module docstring)."""
    order = np.argsort(-signals.scores["combined"], kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    columns = {"sample_id": pa.array(train.sample_id), "given_label": pa.array(train.label.astype(np.int8)),
               "suggested_label": pa.array(signals.suggested.astype(np.int8))}
    for name, score in signals.scores.items():
        if name != "combined":
            columns[f"score_{name.replace('-', '_')}"] = pa.array(score.astype(np.float32))
            columns[f"flag_{name.replace('-', '_')}"] = pa.array(signals.flags[name])
    columns.update({name: pa.array(value) for name, value in signals.extra.items()})
    columns.update({"combined_score": pa.array(signals.scores["combined"].astype(np.float32)),
                    "flagged": pa.array(signals.flags["combined"]), "rank": pa.array(rank),
                    "clean_label": pa.array(train.clean_label.astype(np.int8)), "flipped": pa.array(train.flipped),
                    "fold": pa.array((fold + 1).astype(np.int16)), "oof_probs": art.vectors_to_arrow(oof),
                    "combined_probs": art.vectors_to_arrow(signals.combined_probs)})
    return pa.table(columns)


def write_cleaned(directory: Path, config: AuditConfig, digest: str, train, signals) -> dict:
    """labels/drop.parquet and labels/relabel.parquet; {part: variant name}."""
    flagged = signals.flags["combined"]
    parts = {"drop": np.where(flagged, variants.WITHHELD, train.label),
             "relabel": np.where(flagged, signals.suggested, train.label)}
    names = {}
    for part, label in parts.items():
        variants.write_labels(directory, part, train.sample_id, label, train.clean_label,
                              {"audit": digest, "audited_variant": config.noise, "cleaning": part,
                               "flagged": int(flagged.sum())})
        names[part] = variants.variant_name(config.noise, digest, part)
    return names


def summarise(signals, train) -> dict:
    """Per signal: AUROC and precision@n_flipped when the variant has flips, else how many faces it flags."""
    flipped = train.flipped
    out = {}
    for name, score in signals.scores.items():
        if flipped.any() and not flipped.all():
            out[name] = truth_metrics(score, flipped, signals.flags[name])
        else:
            out[name] = {"flagged": int(signals.flags[name].sum())}
    return out


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (fold workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_audit(config: AuditConfig) -> dict:
    """The whole audit (resuming finished folds); returns audit.json's content."""
    from training.data import PreparedVersion

    wall, cpu, load = time.perf_counter(), _cpu_seconds(), os.getloadavg()[0]
    version = PreparedVersion.open(config.dataset, config.version, config.artifacts_root, config.manifests_root)
    train = version.split_data("train", config.noise)
    spaces = graph_spaces(config, version)
    fold = assign_folds(train.label, config.folds, config.seed, version.num_classes)
    digest = audit_hash(config, version.version, spaces)
    directory = variants.audit_directory(config.dataset, version.version, config.noise, digest)
    directory.mkdir(parents=True, exist_ok=True)
    log.info("audit %s of %s version %s / %s: %d training faces, %d folds, graphs %s -> %s", digest,
             config.dataset, version.version, config.noise, len(train), config.folds, spaces or "none", directory)
    (directory / "audit.yaml").write_text(yaml.safe_dump({
        "audit_version": AUDIT_VERSION, "audit_hash": digest, "version": version.version,
        "audit": config.to_dict(), "graphs": spaces,
        "train": training_config(config, version.version, config.noise).to_dict()}, sort_keys=False))
    jobs = fold_jobs(config, version, train, fold, directory, digest)
    oof = gather(run_folds(jobs, config.jobs), train.sample_id, version.num_classes)   # [n, C]
    fold_seconds = time.perf_counter() - wall
    views = [read_graph_view(graph_path(version.directory, s), s, train.sample_id, version.num_samples)
             for s in spaces]
    signals = compute_signals(train.label, oof, views, config.filter_by)
    art.write_table(directory / "audit.parquet", audit_table(train, fold, oof, signals),
                    {"audit": digest, "version": version.version, "variant": config.noise})
    cleaned = write_cleaned(directory, config, digest, train, signals)
    summary = {"audit_hash": digest, "dataset": config.dataset, "version": version.version,
               "variant": config.noise, "directory": str(directory), "n": len(train),
               "n_flipped": int(train.flipped.sum()), "truth_known": bool(train.flipped.any()),
               "folds": config.folds, "graphs": spaces, "weights": signals.weights, "skipped": signals.skipped,
               "flagged": int(signals.flags["combined"].sum()), "signals": summarise(signals, train),
               "cleaned_variants": cleaned, "fold_seconds": round(fold_seconds, 1)}
    from training.audit.report import write_report

    summary["report"] = str(write_report(directory, version, train, signals, summary, config, views))
    summary.update({"wall_seconds": round(time.perf_counter() - wall, 1),
                    "cpu_seconds": round(_cpu_seconds() - cpu, 1),
                    "load_average_1min_start_end": [round(load, 2), round(os.getloadavg()[0], 2)]})
    (directory / "audit.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
