"""A stage is one registered object: a stage defined in this file alone runs in a real prepare, and the
runner, planner, lock, report and store loop over the registry without naming it anywhere else."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import load_prepare_config
from pipeline.contract.errors import ConfigError
from pipeline.contract.lock import read_lock
from pipeline.contract.tables import SAMPLES, read_table, write_table
from pipeline.prepare import ShardMapper, run_prepare
from pipeline.stages.base import STAGES, Stage, register_stage, registered, steps
from pipeline.verify import verify_version

PROJECT = Path(__file__).resolve().parents[2]
FAST = ["source.n=24", "shard_size=8", "align.detector=given", "align.crop_size=64", "landmarks.backend=provided",
        "graphs.backend=exact", "graphs.k=4", "noise.variants=[sym-0.30]", "report=false"]
TABLE = "class_counts.parquet"


# --- a new global stage, defined here alone: the number of samples of each class in one split --------------

@dataclass(frozen=True)
class ClassCountsConfig:
    split: str = "train"


def write_class_counts(version_dir: Path, config: ClassCountsConfig) -> int:
    samples = read_table(Path(version_dir) / SAMPLES, ["split", "label"]).to_pandas()
    counts = samples[samples["split"] == config.split].groupby("label").size()
    write_table(Path(version_dir) / TABLE, pa.table({"label": pa.array(counts.index.to_numpy(), pa.int8()),
                                                     "count": pa.array(counts.to_numpy(), pa.int64())}))
    return int(counts.sum())


def class_counts_calls(version_dir: Path, config: ClassCountsConfig, spec) -> dict:
    return {"class_counts": lambda: write_class_counts(version_dir, config)}


def summarise(results: dict) -> tuple[int, dict]:
    return results["class_counts"], {}


def class_counts_report() -> list:
    return [("class-counts", "Training samples per class", lambda data: "<p>counted</p>")]


CLASS_COUNTS = Stage(name="class_counts", version="1.0.0", config=ClassCountsConfig, writes=(TABLE,),
                     calls=class_counts_calls, summarise=summarise, report=class_counts_report)


def test_a_stage_defined_in_a_test_file_runs_in_a_real_prepare():
    options = [*FAST[:-1], "report=true"]
    plain = run_prepare(load_prepare_config(None, options), ShardMapper(), progress=False)
    register_stage(CLASS_COUNTS)
    try:
        with_stage = run_prepare(load_prepare_config(None, options), ShardMapper(), progress=False)
    finally:
        STAGES.remove(CLASS_COUNTS.name)
    assert "class_counts" not in plain["computed"]
    assert with_stage["version"] != plain["version"]                  # a new leaf stage: a new version id
    assert with_stage["computed"]["faces"] == 0                        # per-image work reused from the store
    directory = Path(with_stage["path"])
    counts = read_table(directory / TABLE).to_pandas()
    samples = read_table(directory / SAMPLES, ["split", "label"]).to_pandas()
    train = samples[samples["split"] == "train"]
    assert counts["count"].sum() == len(train) == with_stage["computed"]["class_counts"]
    assert dict(zip(counts["label"], counts["count"])) == train.groupby("label").size().to_dict()
    lock = read_lock("synthetic", with_stage["version"])
    assert lock["stage_versions"]["class_counts"] == "1.0.0" and "class_counts" in lock["stages"]
    assert lock["stage_configs"]["class_counts"] == {"split": "train"} and TABLE in lock["outputs"]
    assert verify_version("synthetic", with_stage["version"]).ok
    assert "Training samples per class" in (directory / "report.html").read_text()
    again = run_prepare(load_prepare_config(None, options), ShardMapper(), progress=False)  # unregistered again
    assert again["version"] == plain["version"] and again["reused"]


def test_the_registry_refuses_a_second_stage_of_one_name_and_keeps_pipeline_order():
    names = [stage.name for stage in registered()]
    assert names[:6] == ["faces", "landmarks", "action_units", "pseudo_va", "graphs", "noise"]
    with pytest.raises(ConfigError, match="stage 'noise' is registered twice"):
        register_stage(Stage(name="noise", version="9.9.9"))
    by_name = {stage.name: stage for stage in registered()}
    grouped = steps(tuple(by_name[n] for n in ("faces", "landmarks", "pseudo_va", "graphs", "noise")))
    assert [[s.name for s in step] for step in grouped] == [["faces"], ["landmarks"], ["pseudo_va"],
                                                             ["graphs", "noise"]]   # graphs reads pseudo_va's VA


def test_the_store_imports_no_stage_and_pipeline_imports_no_orchestrator():
    code = ("import sys, pipeline.store.plan, pipeline.store.record, pipeline.store.parts, pipeline.store.prepare_lock;"
            "print([m for m in sys.modules if m.startswith('pipeline.stages')])")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True,
                            env=os.environ, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().replace("'", '"')) == []


def test_worker_warm_up_is_every_enabled_per_image_stages_check():
    from pipeline.config import resolve_stage_configs

    stages = resolve_stage_configs(load_prepare_config(None, FAST))
    checks = stages.warm_checks()
    assert [check.__module__ for check, _ in checks] == [
        f"pipeline.stages.{stage.name}" for stage in registered() if stage.per_image]
    assert all(config is stages.configs[stage.name] for (_, config), stage in
               zip(checks, [s for s in registered() if s.per_image]))
    assert np.all([stage.check is not None for stage in stages.enabled if stage.per_image])
