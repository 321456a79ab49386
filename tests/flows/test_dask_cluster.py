"""The documented cluster path: a real `dask scheduler` and two `dask worker` processes on 127.0.0.1.

README "Scale-out on Dask": start `dask scheduler`, start `dask worker tcp://HOST:8786 --nthreads 1` per
worker, then `python -m flows prepare --dask-address tcp://HOST:8786`. This test does exactly that with
real processes (not a LocalCluster), then checks that the version id and every output's content hash
equal a plain serial run's, and, through the scheduler's task stream, that the per-image shard tasks ran
on the two worker processes this test started (by their pids: `--no-nanny` keeps the worker in the
process this test launched).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from process_group import PROJECT, free_port, started
from pipeline.config import load_prepare_config
from pipeline.contract.lock import read_lock

OVERRIDES = ["source.n=24", "shard_size=4", "graphs.k=4", "graphs.backend=exact", "landmarks.backend=dlib",
             "action_units.backend=estimate", "noise.variants=[sym-0.30]", "report=false"]
PER_IMAGE_STAGES = ("faces", "landmarks", "action-units")     # Prefect task names: `<stage>-shard`
START_LIMIT_S = 120

pytestmark = pytest.mark.slow     # three processes importing dask, plus a flow run: ~1 min on 2 shared cores


def _dask_cli(*args: str) -> list[str]:
    """The `dask` command of this interpreter's environment (the console script beside sys.executable)."""
    script = Path(sys.executable).with_name("dask")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "dask", *args]


def _wait_for_workers(client, count: int, processes: list[subprocess.Popen], logs: list[Path]) -> dict:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        for process, log in zip(processes, logs):
            assert process.poll() is None, f"{log.name} exited:\n{log.read_text(errors='replace')[-2000:]}"
        workers = client.scheduler_info(n_workers=-1)["workers"]
        if len(workers) >= count:
            return workers
        time.sleep(0.5)
    pytest.fail(f"{count} dask workers not connected within {START_LIMIT_S} s")


def _plain_run(root: Path, monkeypatch) -> dict:
    from pipeline.prepare import ShardMapper, run_prepare

    monkeypatch.setenv("FER_ARTIFACTS", str(root / "artifacts"))
    monkeypatch.setenv("FER_MANIFESTS", str(root / "manifests"))
    return run_prepare(load_prepare_config(None, OVERRIDES), ShardMapper(), progress=False)


def _output_hashes(manifests: Path) -> dict[str, str]:
    outputs = read_lock("synthetic", root=manifests)["outputs"]
    return {name: entry["hash"] for name, entry in outputs.items() if name not in ("manifest.json", "report.html")}


def test_dask_scheduler_and_two_worker_processes_build_the_plain_version(prefect_api, tmp_path, monkeypatch):
    from distributed import Client

    from flows.prepare import run_prepare as run_flow

    plain = _plain_run(tmp_path / "plain", monkeypatch)
    monkeypatch.setenv("FER_ARTIFACTS", str(tmp_path / "cluster" / "artifacts"))
    monkeypatch.setenv("FER_MANIFESTS", str(tmp_path / "cluster" / "manifests"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # the workers see what the flow sees: this checkout, the same roots and cache, the same Prefect API
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")]),
           "DASK_DISTRIBUTED__WORKER__DAEMON": "false"}
    worker_args = ["--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"]
    logs = [tmp_path / "scheduler.log", tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    survivors: dict[str, list[int]] = {}
    with ExitStack() as stack:
        scheduler = stack.enter_context(started(
            "scheduler", _dask_cli("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
            env, logs[0], survivors))
        workers = [stack.enter_context(started(name, _dask_cli("worker", address, "--name", name, *worker_args),
                                               env, log, survivors))
                   for name, log in (("worker-a", logs[1]), ("worker-b", logs[2]))]
        client = stack.enter_context(Client(address, timeout=START_LIMIT_S))
        connected = _wait_for_workers(client, 2, [scheduler, *workers], logs)
        address_of = {info["name"]: addr for addr, info in connected.items()}
        pid_at = client.run(os.getpid)               # {worker address: pid}, asked of each worker itself
        client.get_task_stream()                     # installs the scheduler's task-stream recorder
        stream_start = time.time()
        distributed = run_flow(load_prepare_config(None, OVERRIDES), dask_address=address)
        stream = client.get_task_stream(start=stream_start)
    assert not any(survivors.values()), f"processes left running after the stop: {survivors}"
    assert distributed["version"] == plain["version"]
    assert distributed["computed"]["faces"] == 24
    assert _output_hashes(tmp_path / "cluster" / "manifests") == _output_hashes(tmp_path / "plain" / "manifests")
    assert {name: pid_at[addr] for name, addr in address_of.items()} == \
        {"worker-a": workers[0].pid, "worker-b": workers[1].pid}, "the workers are the processes started here"
    ran_on: dict[str, set[str]] = {}
    for record in stream:
        key = str(record["key"])
        ran_on.setdefault(record["worker"], set()).add(key)
    shard_keys = {k for keys in ran_on.values() for k in keys if "shard" in k}
    assert shard_keys, f"no shard task in the scheduler's task stream: {sorted(ran_on)}"
    assert set(ran_on) <= set(address_of.values())
    for name, addr in address_of.items():
        assert any("shard" in k for k in ran_on.get(addr, ())), f"{name} ran no shard task: {ran_on}"
    print("shard tasks per worker:", {name: sum("shard" in k for k in ran_on.get(addr, ()))
                                      for name, addr in address_of.items()})
