"""bench.noise.diagnostics: per-epoch series from metrics.jsonl records and each method's headline numbers."""
from __future__ import annotations

import pytest

from bench.noise.diagnostics import markdown, per_epoch, summarise


def test_per_epoch_means_train_parts_and_keeps_epoch_end_numbers():
    records = [{"kind": "train", "step": 1, "epoch": 0, "loss": 2.0, "guidance_share": 0.1},
               {"kind": "train", "step": 2, "epoch": 0, "loss": 1.0, "guidance_share": 0.3},
               {"kind": "eval", "step": 2, "epoch": 1, "test_accuracy": 0.5, "target_ambiguous_share": 0.25},
               {"kind": "train", "step": 3, "epoch": 1, "loss": 1.0, "guidance_share": float("nan")},
               {"kind": "epoch", "step": 3, "epoch": 2, "target_ambiguous_share": 1.0}]
    series = per_epoch(records)
    assert series["guidance_share"] == [pytest.approx(0.2), None]          # NaN-only epoch -> None
    assert series["target_ambiguous_share"] == [0.25, 1.0] and "loss" not in series and "test_accuracy" not in series


def test_headlines_per_method():
    lanet = summarise("lanet", {"target_ambiguous_share": [0.0, 0.5, 0.97, 1.0]})
    assert lanet["confident_share_last"] == 0.0 and lanet["confident_share_mean"] == pytest.approx(0.3825)
    assert lanet["last_epoch_confident_5pct"] == 2.0
    soft = summarise("soft@x", {"teacher_clean_acc": [0.5, 0.7, 0.6], "student_clean_acc": [0.6, 0.6, 0.6],
                                "teacher_agreement": [0.8, 0.9, 0.95], "teacher_horizon_share": [0.1, 0.1, 0.1]},
                     {"branch": {"selection_accuracy": {"student": 0.7, "teacher": 0.75}}})
    assert soft["epochs_teacher_ahead_on_clean"] == 1.0 and soft["teacher_agreement_last"] == 0.95
    assert soft["val_teacher_minus_student"] == pytest.approx(0.05)
    assert "val_epochs_teacher_leads" not in soft                         # no per-epoch validation series
    leads = summarise("soft", {"val_accuracy_teacher": [0.5, 0.6, None, 0.72, 0.7],
                               "val_accuracy_student": [0.55, 0.6, 0.6, 0.7, 0.66]})
    assert leads["val_epochs_teacher_leads"] == 2.0 and leads["val_first_epoch_teacher_leads"] == 4.0
    assert leads["val_max_teacher_lead"] == pytest.approx(0.04)
    never = summarise("soft", {"val_accuracy_teacher": [0.5, 0.6], "val_accuracy_student": [0.55, 0.6]})
    assert never["val_epochs_teacher_leads"] == 0.0 and never["val_first_epoch_teacher_leads"] == 0.0
    assert never["val_max_teacher_lead"] == pytest.approx(0.0)
    assert summarise("ldl_alsg@lam0", {"guidance_share": [0.0, 0.0]})["guidance_share"] == 0.0
    cell = {"status": "done", "cell": {"method": "lanet", "variant": "sym-0.30", "seed": 0},
            "diagnostics": {"per_epoch": {"target_ambiguous_share": [0.0, 1.0]}}}
    text = "\n".join(markdown([cell], ["lanet"], ["sym-0.30"]))
    assert "## Mechanism diagnostics" in text and "LA-Net confident share (mean over epochs) 0.50" in text


def test_lanet_headlines_after_the_one_hot_start():
    series = {"target_ambiguous_share": [0.0, 0.0, 0.4, 0.6], "target_confident_precision": [0.7, 0.7, 0.9, 0.95],
              "lde_new_max_share": [0.3, 0.5], "lde_expression_contribution_row_spread": [0.01, 0.03]}
    lanet = summarise("lanet@d05", series)
    assert lanet["confident_share_second_half"] == pytest.approx(0.5)     # epochs 3-4: 0.6 and 0.4
    assert lanet["confident_precision_last"] == 0.95
    assert lanet["estimate_max_share_mean"] == pytest.approx(0.4)
    assert lanet["contribution_spread_mean"] == pytest.approx(0.02)
    none_confident = summarise("lanet", {"target_ambiguous_share": [0.0, 1.0], "target_confident_precision": [0.7, None]})
    assert none_confident["confident_precision_last"] is None       # not the last epoch that had one
