"""bench/gpu_science.sh --smoke: the GPU mechanisms benchmark's whole chain on the CPU (pretraining on a disjoint
source, the VA regressor and pseudo-VA prepare, every method and control of the table), with prefect, faiss
and dask made unimportable, as on the GPU machine. (dlib too is missing there; the synthetic generator's
reference points still come from dlib until its dlib-free path lands: then add "dlib" to BLOCKED.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
BLOCKER = '''
import sys
BLOCKED = ("prefect", "faiss", "dask")
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on the GPU machine")
        return None
sys.meta_path.insert(0, _Block())
'''
ROWS = ("baseline", "baseline@scratch", "baseline@lr1e-4", "graph_vote", "graph_vote@va", "ldl_alsg",
        "ldl_alsg@lam0", "lanet", "soft", "ldlva", "baseline@images")


def test_gpu_science_smoke_runs_every_row_on_the_cpu_without_the_heavy_packages(tiny_prepared_version, tmp_path,
                                                                                tmp_path_factory):
    # tiny_prepared_version: the session's 160 seed-0 faces are generated once into the shared image cache
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    cache = os.environ.get("FER_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "fer-cache")
    env = {**os.environ, "PYTHONPATH": str(blocker), "PYTHON": sys.executable, "FER_CACHE": cache}
    work = tmp_path / "work"
    done = subprocess.run(["bash", str(PROJECT / "bench" / "gpu_science.sh"), "--smoke", str(work)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((work / "results" / "benchmark_mechanisms_smoke.json").read_text())
    assert set(summary["actions"].values()) == {"trained"} and len(summary["actions"]) == len(ROWS)
    assert {c["cell"]["method"] for c in summary["cells"]} == set(ROWS)
    mechanisms = json.loads((work / "mechanisms.json").read_text())
    weights = Path(mechanisms["weights"])
    assert weights.is_file() and weights.with_suffix(".json").is_file()
    assert mechanisms["pretrain_recipe"]["prepare_config"]["source"]["seed"] == 1      # the disjoint source
    assert all(c["diagnostics"]["summary"] is not None for c in summary["cells"])
    markdown = (work / "results" / "benchmark_mechanisms_smoke.md").read_text()
    assert "| ldl_alsg@lam0 |" in markdown and "## Mechanism diagnostics" in markdown
