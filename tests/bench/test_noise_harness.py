"""The noise benchmark harness (bench.noise) on the small prepared synthetic version: 2 methods x 1 variant x 1 seed, a few steps;
the table, CSV, plot and per-cell JSON are written, SOFT's evaluation branch is chosen on validation (or kept
as configured without one; never on test) and recorded, a second run retrains nothing, --jobs 2 gives the
serial numbers, and the equal-images control trains the baseline (1 + K) times as long."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from bench.noise.cli import build_plan, main, parse_args
from bench.noise.plan import flatten, load_benchmark_file
from pipeline.contract.errors import ConfigError


def _write_config(path, steps: int = 2):
    config = {"benchmark": {"name": "bench_{dataset}_test"},
              "train": {"epochs": 1, "batch_size": 16, "data": {"image_size": 56, "num_workers": 0,
                                                                "persistent_workers": False, "pin_memory": False},
                        "model": {"backbone": "tiny"},
                        "runtime": {"device": "cpu", "threads": 1, "progress": False, "tensorboard": False,
                                    "report": False, "max_steps": steps, "log_every": 1}},
              "methods": {"soft": {"method_config": {"consistency_rampup_epochs": 0.0}}}}
    path.write_text(yaml.safe_dump(config))
    return path


def _argv(tiny, tmp_path, config):
    return ["--dataset", tiny.dataset, "--methods", "baseline,soft", "--noise", "sym-0.30", "--seeds", "0",
            "--config", str(config), "--out", str(tmp_path / "results"), "--runs-root", str(tmp_path / "runs"),
            "--set", f"artifacts_root={tiny.artifacts_root}", "--set", f"manifests_root={tiny.manifests_root}"]


def test_benchmark_writes_table_and_second_run_retrains_nothing(tiny_prepared_version, tmp_path):
    argv = _argv(tiny_prepared_version, tmp_path, _write_config(tmp_path / "bench.yaml"))
    assert main(argv) == 0
    out = tmp_path / "results"
    name = "bench_synthetic_test"
    summary = json.loads((out / f"{name}.json").read_text())
    assert summary["actions"] == {"baseline__sym-0.30__s0": "trained", "soft__sym-0.30__s0": "trained"}
    for suffix in (".md", ".csv", ".png"):
        assert (out / f"{name}{suffix}").stat().st_size > 0
    rows = list(csv.DictReader((out / f"{name}.csv").open()))
    metrics = ("test_accuracy", "test_mean_class_accuracy", "recovered", "memorised", "train_seconds")
    assert {(r["method"], r["metric"]) for r in rows} == {(m, k) for m in ("baseline", "soft") for k in metrics}
    for r in rows:
        assert r["n"] == "1" and (r["metric"] == "train_seconds" or 0.0 <= float(r["mean"]) <= 1.0)
    soft = json.loads((out / f"{name}_cells" / "soft__sym-0.30__s0.json").read_text())
    # the tiny version has no val split: the configured branch is kept, the test split chooses nothing
    assert soft["status"] == "done" and soft["branch"]["branch"] == "student"
    assert soft["branch"]["selected_on"].startswith("fixed") and soft["branch"]["selection_accuracy"] == {}
    assert soft["metrics"]["test_accuracy"] == soft["branch"]["test_accuracy"]
    markdown = (out / f"{name}.md").read_text()
    assert "| soft |" in markdown and "Flip recovery" in markdown and "(1 seed)" in markdown
    assert "Memorised" in markdown and "chooses nothing" in markdown

    cell_files = sorted((out / f"{name}_cells").glob("*.json"))
    mtimes = [p.stat().st_mtime_ns for p in cell_files]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert main(argv) == 0
    summary = json.loads((out / f"{name}.json").read_text())
    assert set(summary["actions"].values()) == {"skipped"}
    assert [p.stat().st_mtime_ns for p in cell_files] == mtimes
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs
    # a changed training config makes the cells stale: they train again, in new run directories
    argv_changed = _argv(tiny_prepared_version, tmp_path, _write_config(tmp_path / "bench2.yaml", steps=1))
    assert main(argv_changed + ["--methods", "baseline"]) == 0
    summary = json.loads((out / f"{name}.json").read_text())
    assert summary["actions"] == {"baseline__sym-0.30__s0": "trained"}
    assert len(list((tmp_path / "runs").iterdir())) == len(runs) + 1
    # --force retrains a finished cell from scratch, in a fresh run directory (no resume)
    assert main(argv_changed + ["--methods", "baseline", "--force"]) == 0
    forced = json.loads((out / f"{name}_cells" / "baseline__sym-0.30__s0.json").read_text())
    assert forced["run_dir"].endswith("-r2") and forced["resumed"] is False


def test_config_file_forms_and_bad_input(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text("epochs: 2\noptim: {lr: 0.01}\n")
    assert load_benchmark_file(plain) == ({}, {"epochs": 2, "optim": {"lr": 0.01}}, {})
    assert flatten({"optim": {"lr": 0.01}, "epochs": 2, "method_config": {"hidden": [4, 2]}}) == [
        ("optim.lr", 0.01), ("epochs", 2), ("method_config.hidden", [4, 2])]
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {}\nextra: 1\n")
    with pytest.raises(ConfigError, match="extra"):
        load_benchmark_file(bad)
    with pytest.raises(ConfigError, match="valid choices"):
        build_plan(*parse_args(["--dataset", "synthetic", "--methods", "baseline,nope"]))
    with pytest.raises(ConfigError, match="seeds"):
        build_plan(*parse_args(["--dataset", "synthetic", "--seeds", "a,b"]))


def test_aggregate_mean_std_and_markdown_layout():
    from bench.noise.report import aggregate, format_markdown

    def cell(method, seed, acc, status="done"):
        return {"cell": {"method": method, "variant": "sym-0.30", "seed": seed}, "status": status,
                "metrics": {"test_accuracy": acc, "test_mean_class_accuracy": acc, "recovered": 0.5}}

    records = [cell("a", 0, 0.5), cell("a", 1, 0.7), cell("b", 0, 0.4), cell("b", 1, None, status="failed")]
    rows = aggregate(records, ["a", "b"], ["sym-0.30", "clean"])
    by_key = {(r["method"], r["variant"], r["metric"]): r for r in rows}
    a = by_key[("a", "sym-0.30", "test_accuracy")]
    assert a["mean"] == pytest.approx(0.6) and a["std"] == pytest.approx(0.1414213, rel=1e-5) and a["n"] == 2
    b = by_key[("b", "sym-0.30", "test_accuracy")]
    assert b["n"] == 1 and b["failed"] == 1 and b["std"] == 0.0
    assert by_key[("a", "clean", "test_accuracy")]["mean"] is None
    summary = {"dataset": "synthetic", "dataset_version": "v", "methods": ["a", "b"],
               "variants": ["sym-0.30", "clean"], "seeds": [0, 1], "table": rows, "cells": records,
               "machine": {"description": "2-core CPU"}, "config_file": None, "overrides": []}
    text = format_markdown(summary)
    assert "| Method | sym-0.30 | clean |" in text
    assert "| a | 60.00 ± 14.14 | - |" in text
    assert "| b | 40.00 (1 seed) (1 failed) | - |" in text


def test_a_second_concurrent_run_of_the_same_benchmark_fails_at_once(tmp_path):
    from bench.noise.harness import exclusive_run

    plan = build_plan(*parse_args(["--dataset", "synthetic", "--out", str(tmp_path / "out"),
                                   "--runs-root", str(tmp_path / "runs")]))
    with exclusive_run(plan), pytest.raises(ConfigError, match="another benchmark run"), exclusive_run(plan):
        pass
    with exclusive_run(plan):   # released afterwards
        pass


def _cell_metrics(out, name):
    return {p.stem: json.loads(p.read_text())["metrics"] for p in sorted((out / f"{name}_cells").glob("*.json"))}


def test_parallel_jobs_give_the_serial_numbers_and_the_equal_images_control(tiny_prepared_version, tmp_path):
    config = _write_config(tmp_path / "bench.yaml", steps=3)
    name = "bench_synthetic_test"
    common = ["--methods", "baseline,ldl_alsg", "--equal-images", "--set", "data.groups_per_batch=2",
              "--set", "data.au_neighbors=1", "--set", "data.landmark_neighbors=2"]
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(_argv(tiny_prepared_version, serial, config) + common) == 0
    assert main(_argv(tiny_prepared_version, parallel, config) + common + ["--jobs", "2"]) == 0
    assert _cell_metrics(serial / "results", name) == _cell_metrics(parallel / "results", name)
    summary = json.loads((parallel / "results" / f"{name}.json").read_text())
    assert set(summary["actions"].values()) == {"trained"} and len(summary["actions"]) == 3
    control = json.loads((parallel / "results" / f"{name}_cells" / "baseline@images__sym-0.30__s0.json").read_text())
    baseline = json.loads((parallel / "results" / f"{name}_cells" / "baseline__sym-0.30__s0.json").read_text())
    grouped = json.loads((parallel / "results" / f"{name}_cells" / "ldl_alsg__sym-0.30__s0.json").read_text())
    assert control["epochs"] == 4 * baseline["epochs"] == 4          # 1 + 1 AU + 2 landmark neighbours
    assert control["images_seen"] == grouped["images_seen"] == 4 * baseline["images_seen"]
    markdown = (parallel / "results" / f"{name}.md").read_text()
    assert "| baseline@images |" in markdown and "Equal images seen" in markdown
    # resume works across modes: a serial rerun of the parallel results retrains nothing
    assert main(_argv(tiny_prepared_version, parallel, config) + common) == 0
    summary = json.loads((parallel / "results" / f"{name}.json").read_text())
    assert set(summary["actions"].values()) == {"skipped"}


def test_equal_images_control_stretches_the_schedule(tmp_path):
    from bench.noise.plan import Cell, cell_config

    args = ["--dataset", "synthetic", "--methods", "baseline,ldlva", "--equal-images", "--noise", "sym-0.30",
            "--out", str(tmp_path), "--set", "epochs=5", "--set", "schedule.name=step",
            "--set", "schedule.warmup_epochs=1", "--set", "schedule.milestones=[2,4]",
            "--set", "data.au_neighbors=3", "--set", "data.landmark_neighbors=0"]
    plan = build_plan(*parse_args(args))
    assert plan.methods == ("baseline", "ldlva", "baseline@images") and plan.images_factor() == 4
    control = cell_config(plan, Cell("baseline@images", "sym-0.30", 0))
    assert control.method == "baseline" and control.epochs == 20
    assert control.schedule.warmup_epochs == 4 and list(control.schedule.milestones) == [8, 16]
    with pytest.raises(ConfigError, match="grouped method"):
        build_plan(*parse_args(["--dataset", "synthetic", "--methods", "baseline", "--equal-images",
                                "--out", str(tmp_path)])).images_factor()
    with pytest.raises(ConfigError, match="jobs"):
        build_plan(*parse_args(["--dataset", "synthetic", "--jobs", "0"]))


def test_soft_branch_is_chosen_on_validation_when_the_version_has_one(tmp_path_factory, tmp_path):
    import os

    from bench.prepared import prepare_small_version

    base = tmp_path_factory.getbasetemp()
    cache = os.environ.get("FER_TEST_CACHE") or str(base / "fer-cache")
    version = prepare_small_version(base / "small-version-val", n=84, crop_size=64, cache=cache,
                                    source_options={"validation": True})
    argv = _argv(version, tmp_path, _write_config(tmp_path / "bench.yaml"))
    assert main(argv + ["--methods", "soft"]) == 0
    soft = json.loads((tmp_path / "results" / "bench_synthetic_test_cells" / "soft__sym-0.30__s0.json").read_text())
    assert soft["branch"]["selected_on"] == "val" and set(soft["branch"]["selection_accuracy"]) == {
        "student", "teacher"}
    # the engine scored both branches on validation at its last evaluation: the same model, the same numbers
    series, summary = soft["diagnostics"]["per_epoch"], soft["diagnostics"]["summary"]
    for branch, accuracy in soft["branch"]["selection_accuracy"].items():
        assert series[f"val_accuracy_{branch}"] == [pytest.approx(accuracy)]
    lead = soft["branch"]["selection_accuracy"]["teacher"] - soft["branch"]["selection_accuracy"]["student"]
    assert summary["val_max_teacher_lead"] == pytest.approx(lead)
    assert summary["val_epochs_teacher_leads"] == float(lead > 0)


def test_markdown_names_the_command_and_appends_the_notes_file(tmp_path):
    from bench.noise.report import format_markdown

    notes = tmp_path / "findings.md"
    summary = {"dataset": "synthetic", "dataset_version": "v", "methods": ["baseline"], "variants": ["clean"],
               "seeds": [0], "table": [], "cells": [], "machine": {"description": "2-core CPU"},
               "config_file": None, "overrides": [], "command": "python bench/benchmark_noise.py --jobs 2",
               "jobs": 2, "notes_file": str(notes)}
    assert "not written yet" in format_markdown(summary)
    notes.write_text("## Findings\n\nLA-Net's EL loss never fires.\n")
    text = format_markdown(summary)
    assert "    python bench/benchmark_noise.py --jobs 2" in text and "LA-Net's EL loss never fires." in text
    plan = build_plan(*parse_args(["--dataset", "synthetic", "--jobs", "2", "--out", str(tmp_path)]))
    assert plan.command.endswith("python bench/benchmark_noise.py --dataset synthetic --jobs 2 --out " + str(tmp_path))


def test_named_rows_graph_vote_and_mechanism_diagnostics_in_the_cells(tiny_prepared_version, tmp_path):
    config = _write_config(tmp_path / "bench.yaml", steps=2)
    data = yaml.safe_load(config.read_text())
    data["methods"]["ldl_alsg@lam0"] = {"method_config": {"lam": 0.0}}
    config.write_text(yaml.safe_dump(data))
    argv = _argv(tiny_prepared_version, tmp_path, config)
    argv[argv.index("--methods") + 1] = "ldl_alsg,ldl_alsg@lam0,graph_vote"
    argv += ["--set", "data.groups_per_batch=2", "--set", "data.au_neighbors=1", "--set", "data.landmark_neighbors=1"]
    assert main(argv) == 0
    cells = tmp_path / "results" / "bench_synthetic_test_cells"
    grouped = json.loads((cells / "ldl_alsg__sym-0.30__s0.json").read_text())
    control = json.loads((cells / "ldl_alsg@lam0__sym-0.30__s0.json").read_text())
    vote = json.loads((cells / "graph_vote__sym-0.30__s0.json").read_text())
    assert grouped["diagnostics"]["summary"]["guidance_share"] > 0
    assert control["diagnostics"]["summary"]["guidance_share"] == 0.0        # the method's own term off
    assert 0 < grouped["diagnostics"]["summary"]["aij_median"] < 1
    assert len(grouped["diagnostics"]["per_epoch"]["guidance_share"]) == 1
    assert 0.0 <= vote["diagnostics"]["summary"]["vote_changes_label"] <= 1.0
    markdown = (tmp_path / "results" / "bench_synthetic_test.md").read_text()
    assert "| ldl_alsg@lam0 |" in markdown and "## Mechanism diagnostics" in markdown
    assert "LDL-ALSG guidance share of the loss" in markdown
    # --aggregate-only: the table of the finished cells; seed 1 is not trained
    assert main(argv + ["--seeds", "0,1", "--aggregate-only"]) == 0
    summary = json.loads((tmp_path / "results" / "bench_synthetic_test.json").read_text())
    assert summary["actions"]["graph_vote__sym-0.30__s1"] == "not trained"
    assert summary["actions"]["graph_vote__sym-0.30__s0"] == "skipped" and not (cells / "graph_vote__sym-0.30__s1.json").exists()
    undeclared = _argv(tiny_prepared_version, tmp_path, config) + ["--methods", "soft@fast"]
    with pytest.raises(ConfigError, match="named rows"):
        build_plan(*parse_args(undeclared))


def test_named_rows_layer_over_the_set_overrides_in_the_mechanisms_config(tmp_path):
    from bench.noise.plan import Cell, cell_config

    args = ["--dataset", "synthetic", "--config", "training/configs/benchmark_mechanisms_cpu.yaml", "--out",
            str(tmp_path), "--methods", "baseline,baseline@scratch,baseline@lr1e-4,ldl_alsg,ldl_alsg@lam0,soft,lanet",
            "--set", "model.weights=/w/resnet_small-0123.pt"]
    plan = build_plan(*parse_args(args))
    config = {m: cell_config(plan, Cell(m, "sym-0.30", 0)) for m in plan.methods}
    assert config["baseline"].model.weights == "/w/resnet_small-0123.pt"
    assert config["baseline@scratch"].model.weights is None                  # the from-scratch reference
    assert config["baseline@lr1e-4"].optim.lr == 1e-4                       # the paper-lr reference
    soft = config["soft"].method_config                                     # the paper's lengths, not scaled
    assert config["soft"].optim.lr == 1e-3 and (soft["warmup_epochs"], soft["consistency_rampup_epochs"]) == (6, 5.0)
    assert config["ldl_alsg"].method_config["lam"] == 5e-4 and config["ldl_alsg@lam0"].method_config["lam"] == 0.0
    assert config["ldl_alsg@lam0"].data.au_neighbors == config["ldl_alsg"].data.au_neighbors == 1
    assert config["lanet"].batch_size >= 64 and config["lanet"].method_config["k"] == 4
    assert config["baseline"].data.random_crop and config["baseline"].data.flip


def test_the_verdict_against_controls_counts_a_win_only_above_the_seed_spread(tmp_path):
    from bench.noise.report import aggregate, format_markdown, verdict

    def cell(method, seed, acc):
        return {"cell": {"method": method, "variant": "sym-0.30", "seed": seed}, "status": "done",
                "metrics": {"test_accuracy": acc}}

    accs = {"m": (0.80, 0.84), "base": (0.70, 0.72), "vote": (0.78, 0.80)}
    rows = aggregate([cell(m, s, a) for m, pair in accs.items() for s, a in enumerate(pair)],
                     list(accs), ["sym-0.30"])
    index = {(r["method"], r["variant"], r["metric"]): r for r in rows}
    row = lambda m: index[(m, "sym-0.30", "test_accuracy")]  # noqa: E731
    assert verdict(row("m"), [row("base")])["beats_all"]                     # +11 points, spread 2.8
    result = verdict(row("m"), [row("base"), row("vote")])                   # +3 points, spread 2.8: a win
    assert result["beats_all"] and result["differences"][1][0] == "vote"
    assert result["differences"][1][1] == pytest.approx(0.03)
    assert not verdict(row("vote"), [row("m")])["beats_all"]
    summary = {"dataset": "synthetic", "dataset_version": "v", "methods": list(accs), "variants": ["sym-0.30"],
               "seeds": [0, 1], "table": rows, "cells": [], "machine": {"description": "2-core CPU"},
               "config_file": None, "overrides": [], "controls": {"m": ["base", "vote"], "vote": ["m"]}}
    text = format_markdown(summary)
    assert "| m | **yes**: base +11.0 (2.8), vote +3.0 (2.8) |" in text
    assert "| vote | no: m -3.0 (2.8) |" in text

    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: {controls: {m: base}}\ntrain: {}\n")
    with pytest.raises(ConfigError, match="controls"):
        build_plan(*parse_args(["--dataset", "synthetic", "--config", str(bad)]))
    plan = build_plan(*parse_args(["--dataset", "synthetic", "--config", "training/configs/benchmark_mechanisms_cpu.yaml",
                                   "--out", str(tmp_path)]))
    assert dict(plan.controls)["ldlva"][:2] == ("baseline", "graph_vote")
