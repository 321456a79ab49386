"""Mechanism diagnostics per cell (issue 19 item 5): is each paper's own mechanism at work in the run?

Read from the run's metrics.jsonl after training: the method's per-step parts (train records, averaged per
epoch) and its on_epoch_end numbers (eval/epoch records). Saved in the cell JSON as `diagnostics`
({"per_epoch": {key: [value per epoch]}, "summary": {headline: value}}) and shown in the table:

  lanet       confident share: samples whose LDE target's max share exceeds delta, so they join a pseudo-label
              group of the EL loss (1 - target_ambiguous_share): last epoch, mean over epochs, and the last
              epoch in which at least 5% of the samples are confident, mean over the run's second half (after
              the one-hot start has decayed); the share of confident targets whose argmax is the clean class;
              what shapes the LDE estimate: its max share and the spread of c_ij within a row
  soft        teacher-student agreement on training batches; the teacher's effective EMA horizon
              1 / (1 - decay) as a share of the run's steps; epochs in which the teacher predicts the training
              batches' clean labels better than the student (clean labels read for this diagnostic only);
              on a version with a val split, the teacher against the student on VALIDATION at every epoch
              (the engine's val_accuracy_teacher / val_accuracy_student): epochs in which the teacher leads,
              the first of them (0: never) and the largest lead
  ldl_alsg    the guidance term's share of the loss (lambda x guidance / loss) and the a_ij of the batch
              neighbours (median, 10th and 90th percentiles), means over the run
  ldlva       the learned lambda (trust in the given label) on flipped vs clean training samples and the
              AUROC of 1 - lambda for finding the flips (0.5: it knows nothing), last epoch
  graph_vote  how often the vote's argmax leaves the face's own noisy label; flip recovery of the votes
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.noise.plan import trainer_method

# keys of metrics.jsonl records that are the engine's, not a method's
ENGINE_KEYS = {"kind", "step", "epoch", "loss", "lr", "images_per_s", "train_acc", "test_accuracy",
               "test_mean_class_accuracy", "n_flipped", "recovered", "memorised", "confusion",
               "per_class_accuracy", "flipped_share", "kept_agreement", "votes_js_bits"}


def per_epoch(records: list[dict]) -> dict[str, list[float | None]]:
    """{key: [value at epoch 1, 2, ...]} of every method number: train parts averaged over the epoch's
    records, on_epoch_end numbers as logged. Train records logged at epoch e (0-based, during it) count
    for epoch e + 1, as on_epoch_end's epoch is the number of epochs done (an evaluation before the first
    epoch ended, a run stopped by runtime.max_steps, counts for epoch 1)."""
    sums: dict[tuple[str, int], list[float]] = defaultdict(list)
    epochs = set()
    for record in records:
        if record.get("kind") not in ("train", "eval", "epoch"):
            continue
        epoch = int(record["epoch"]) + 1 if record["kind"] == "train" else max(1, int(record["epoch"]))
        epochs.add(epoch)
        for key, value in record.items():
            if key not in ENGINE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                sums[(key, epoch)].append(float(value))
    order = sorted(e for e in epochs if e >= 1)
    keys = sorted({key for key, _ in sums})
    return {key: [_mean(sums.get((key, e))) for e in order] for key in keys}


def _mean(values: list[float] | None) -> float | None:
    finite = [v for v in values or [] if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _last(series: list | None) -> float | None:
    values = [v for v in series or [] if v is not None]
    return values[-1] if values else None


def _run_mean(series: list | None) -> float | None:
    values = [v for v in series or [] if v is not None]
    return float(np.mean(values)) if values else None


def summarise(method: str, series: dict[str, list], record: dict | None = None) -> dict[str, float | None]:
    """The headline numbers of a method's mechanism (see the module docstring)."""
    base, out = trainer_method(method), {}
    if base == "lanet" and "target_ambiguous_share" in series:
        confident = [None if v is None else 1.0 - v for v in series["target_ambiguous_share"]]
        out["confident_share_last"] = _last(confident)
        out["confident_share_mean"] = _run_mean(confident)
        formed = [epoch for epoch, v in enumerate(confident, 1) if v is not None and v >= 0.05]
        out["last_epoch_confident_5pct"] = float(formed[-1]) if formed else 0.0
        out["confident_share_second_half"] = _run_mean(confident[len(confident) // 2:])
        precision = series.get("target_confident_precision") or [None]     # None: no confident target
        out["confident_precision_last"] = precision[-1]
        out["estimate_max_share_mean"] = _run_mean(series.get("lde_new_max_share"))
        out["contribution_spread_mean"] = _run_mean(series.get("lde_expression_contribution_row_spread"))
    elif base == "soft":
        out["teacher_agreement_last"] = _last(series.get("teacher_agreement"))
        out["teacher_horizon_share_end"] = _last(series.get("teacher_horizon_share"))
        teacher, student = series.get("teacher_clean_acc") or [], series.get("student_clean_acc") or []
        ahead = [t - s for t, s in zip(teacher, student) if t is not None and s is not None]
        out["epochs_teacher_ahead_on_clean"] = float(sum(d > 0 for d in ahead)) if ahead else None
        out.update(_teacher_leads_on_val(series.get("val_accuracy_teacher"), series.get("val_accuracy_student")))
        branch = (record or {}).get("branch") or {}
        scores = branch.get("selection_accuracy") or {}
        if {"teacher", "student"} <= set(scores):
            out["val_teacher_minus_student"] = scores["teacher"] - scores["student"]
    elif base == "ldl_alsg":
        out["guidance_share"] = _run_mean(series.get("guidance_share"))
        for key in ("aij_p10", "aij_median", "aij_p90"):
            out[key] = _run_mean(series.get(key))
    elif base in ("ldlva", "ldlva_memory"):
        for key in ("lambda_flipped", "lambda_clean", "lambda_flip_auroc"):
            out[key] = _last(series.get(key))
    elif base == "graph_vote":
        out["vote_changes_label"] = _last(series.get("vote_changes_label"))
        out["vote_target_recovered"] = _last(series.get("target_recovered"))
    return out


def _teacher_leads_on_val(teacher: list | None, student: list | None) -> dict[str, float | None]:
    """From the per-epoch validation accuracies of SOFT's two branches (the engine's `val_accuracy_<branch>`):
    in how many epochs the teacher is strictly ahead, the first such epoch (0: never) and the largest
    teacher - student difference over the epochs (negative when it never leads). {} without the series."""
    pairs = [(epoch, t - s) for epoch, (t, s) in enumerate(zip(teacher or [], student or []), 1)
             if t is not None and s is not None]
    if not pairs:
        return {}
    leads = [epoch for epoch, lead in pairs if lead > 0]
    return {"val_epochs_teacher_leads": float(len(leads)),
            "val_first_epoch_teacher_leads": float(leads[0]) if leads else 0.0,
            "val_max_teacher_lead": max(lead for _, lead in pairs)}


def cell_diagnostics(run_dir: str | Path, method: str, record: dict | None = None) -> dict:
    """{'per_epoch', 'summary'} of one finished run (empty dicts when it logged nothing)."""
    from training.report import read_metrics

    series = per_epoch(read_metrics(Path(run_dir) / "metrics.jsonl"))
    return {"per_epoch": series, "summary": summarise(method, series, record)}


HEADLINES = {   # summary key -> (column title, format)
    "confident_share_last": ("LA-Net confident share (last epoch)", "{:.2f}"),
    "confident_share_mean": ("LA-Net confident share (mean over epochs)", "{:.2f}"),
    "last_epoch_confident_5pct": ("LA-Net last epoch with >= 5% confident", "{:.0f}"),
    "confident_share_second_half": ("LA-Net confident share (mean over the second half)", "{:.2f}"),
    "confident_precision_last": ("LA-Net confident targets' argmax = clean class (last epoch)", "{:.2f}"),
    "estimate_max_share_mean": ("LA-Net new estimate's max share (mean over epochs)", "{:.2f}"),
    "contribution_spread_mean": ("LA-Net c_ij spread within a row (max - min, mean)", "{:.3f}"),
    "teacher_agreement_last": ("SOFT teacher-student agreement (last epoch)", "{:.2f}"),
    "teacher_horizon_share_end": ("SOFT teacher horizon / run steps", "{:.2f}"),
    "epochs_teacher_ahead_on_clean": ("SOFT epochs teacher ahead on clean train labels", "{:.1f}"),
    "val_teacher_minus_student": ("SOFT val accuracy teacher - student", "{:+.1%}"),
    "val_epochs_teacher_leads": ("SOFT epochs the teacher leads on val", "{:.1f}"),
    "val_first_epoch_teacher_leads": ("SOFT first epoch it leads on val (0: never)", "{:.1f}"),
    "val_max_teacher_lead": ("SOFT max teacher lead on val", "{:+.1%}"),
    "guidance_share": ("LDL-ALSG guidance share of the loss", "{:.2%}"),
    "aij_median": ("LDL-ALSG a_ij median", "{:.2f}"),
    "aij_p10": ("LDL-ALSG a_ij p10", "{:.2f}"),
    "aij_p90": ("LDL-ALSG a_ij p90", "{:.2f}"),
    "lambda_flipped": ("LDLVA lambda on flipped", "{:.2f}"),
    "lambda_clean": ("LDLVA lambda on clean", "{:.2f}"),
    "lambda_flip_auroc": ("LDLVA AUROC of 1 - lambda for the flips", "{:.2f}"),
    "vote_changes_label": ("graph_vote: vote leaves the noisy label", "{:.1%}"),
    "vote_target_recovered": ("graph_vote: flips recovered by the vote", "{:.1%}"),
}


def markdown(cells: list[dict], methods, variants) -> list[str]:
    """One line per (row, variant): its headline numbers, mean over seeds (and the seeds' range)."""
    lines = []
    for method in methods:
        for variant in variants:
            done = [c for c in cells if c.get("status") == "done" and c["cell"]["method"] == method
                    and c["cell"]["variant"] == variant and (c.get("diagnostics") or {}).get("per_epoch")]
            if not done:
                continue
            # recomputed from the stored per-epoch series, so cells written before a headline changed show it too
            summaries = [summarise(method, c["diagnostics"]["per_epoch"], c) for c in done]
            parts = []
            for key, (title, fmt) in HEADLINES.items():
                values = [summary.get(key) for summary in summaries]
                values = [v for v in values if v is not None and math.isfinite(v)]
                if values:
                    text = fmt.format(float(np.mean(values)))
                    if len(values) > 1:
                        text += f" [{fmt.format(min(values))}, {fmt.format(max(values))}]"
                    parts.append(f"{title} {text}")
            if parts:
                lines.append(f"- **{method}** {variant} ({len(done)} seed{'s' * (len(done) > 1)}): " + "; ".join(parts))
    if not lines:
        return []
    return (["## Mechanism diagnostics", "",
             "Is each method's own mechanism at work? Mean over seeds [min, max]; per-epoch series in each cell's "
             "JSON (`diagnostics.per_epoch`). See bench/noise/diagnostics.py for each number's definition.", ""]
            + lines + [""])
