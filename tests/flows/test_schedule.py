"""Scheduled runs: a real `prefect server start`, `python -m flows serve --interval --watch`, runs complete.

The slow test sees two scheduled runs complete (the first prepares the version and writes its lock, the
second finds it complete and ends at once with the same id), then removes the schedule and checks that
a change to the watched folder alone starts a run. It starts both processes itself (each in its own
process group, with its own PREFECT_HOME, SQLite database and artefact folders under tmp_path), follows
the deployment's flow runs through the server's REST API, and stops everything it started on the way out
(context managers): SIGTERM, then SIGKILL to the whole process group after a grace period, then a check
that no process of either group is left.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.schedule import WATCH_TAG
from pipeline.config import load_prepare_config
from pipeline.contract.errors import ConfigError
from pipeline.contract.lock import read_lock

PROJECT = Path(__file__).resolve().parents[2]
SMALL = ["source.n=48", "shard_size=12", "graphs.k=4", "graphs.backend=exact", "noise.variants=[sym-0.30]",
         "landmarks.backend=dlib", "action_units.backend=estimate"]
DEPLOYMENT = "prepare-synthetic-test"
INTERVAL_S = 10
SERVER_START_LIMIT_S = 240       # a loaded 2-core machine took 38 s; leave room
RUNS_LIMIT_S = 360               # two scheduled runs must complete within this
WATCH_LIMIT_S = 180              # the run a watched change starts must complete within this
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
VERSION_IN_LOG = re.compile(r"version ([0-9a-f]{16})")


# --- fast checks of serve_prepare's argument handling (no server) --------------------------------

def test_serve_prepare_needs_an_api_url_and_one_valid_schedule(monkeypatch):
    from flows.schedule import serve_prepare

    config = load_prepare_config(None, SMALL, dataset="synthetic")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ConfigError, match="make server"):
        serve_prepare(config, interval=10)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")      # never contacted: fails before
    with pytest.raises(ConfigError, match="not valid"):
        serve_prepare(config, cron="every day at three")
    with pytest.raises(ConfigError, match="exactly one"):
        serve_prepare(config)
    with pytest.raises(ConfigError, match="positive"):
        serve_prepare(config, interval=0)
    bad = load_prepare_config(None, [*SMALL, "graphs.nonsense=1"], dataset="synthetic")
    with pytest.raises(ConfigError, match="nonsense"):
        serve_prepare(bad, interval=10)


def test_serve_prepare_rejects_a_missing_watched_path(monkeypatch, tmp_path):
    from flows.schedule import serve_prepare

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    config = load_prepare_config(None, SMALL, dataset="synthetic")
    with pytest.raises(ConfigError, match="does not exist"):
        serve_prepare(config, interval=10, watch=tmp_path / "missing")


def test_manifest_watch_starts_one_run_per_change_once_it_holds_still(tmp_path):
    from flows.schedule import ManifestWatch, path_signature

    class RecordingWatch(ManifestWatch):
        """A fake: records the runs it would start instead of calling the Prefect API."""

        def _start_run(self) -> None:
            self.triggered += 1

    root = tmp_path / "dataset"
    (root / "happy").mkdir(parents=True)
    (root / "labels.csv").write_text("a,1\n")
    watch = RecordingWatch(root, "prepare/prepare-folder", every_s=60)
    assert not watch.poll() and watch.triggered == 0                   # nothing changed
    (root / "labels.csv").write_text("a,1\nb,2\n")
    assert not watch.poll()                                            # changed: wait for it to hold still
    assert watch.poll() and watch.triggered == 1                       # held still: one run
    assert not watch.poll() and watch.triggered == 1                   # no second run for the same change
    before = path_signature(root)
    time.sleep(0.05)                                                   # past the file system's mtime tick
    (root / "happy" / "new.png").write_bytes(b"x")                    # a file added one level down
    assert path_signature(root) != before
    watch.poll()
    assert watch.poll() and watch.triggered == 2
    assert path_signature(tmp_path / "missing") == ()


# --- helpers of the slow test ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    import psutil

    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _stop(process: subprocess.Popen, grace_s: float = 30.0) -> list[int]:
    """SIGTERM the process, SIGKILL its group after `grace_s`; returns the group's survivors (should be [])."""
    pgid = process.pid                       # start_new_session: the process leads its own group
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            process.wait(10)
    if _group_members(pgid):                 # flow-run children outliving their parent
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(1.0)
    return _group_members(pgid)


@contextmanager
def _started(label: str, command: list[str], env: dict, log_path: Path, survivors: dict):
    """Popen in its own session with output to `log_path`; always stopped on exit (survivors[label])."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:
            survivors[label] = _stop(process)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _wait_healthy(api, process: subprocess.Popen, log_path: Path) -> float:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < SERVER_START_LIMIT_S:
        assert process.poll() is None, f"prefect server exited ({process.returncode}):\n{_tail(log_path)}"
        try:
            if api.get("/health", timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    pytest.fail(f"prefect server not healthy after {SERVER_START_LIMIT_S} s:\n{_tail(log_path)}")


def _deployment_runs(api, name: str) -> list[dict]:
    found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": [name]}}}).json()
    if not found:
        return []
    body = {"flow_runs": {"deployment_id": {"any_": [found[0]["id"]]}}, "sort": "EXPECTED_START_TIME_ASC",
            "limit": 200}
    return api.post("/flow_runs/filter", json=body).json()


def _run_messages(api, run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    return [entry["message"] for entry in api.post("/logs/filter", json=body).json()]


def _run_version(api, run_id: str, wait_s: float = 60.0) -> tuple[str | None, bool]:
    """(version id the run logged, whether it found the version complete and returned early).

    Run logs reach the API in batches (every 2 s, and at process exit), so a run can be Completed a
    moment before its last messages are stored: poll for them.
    """
    deadline = time.monotonic() + wait_s
    while True:
        for message in _run_messages(api, run_id):
            match = VERSION_IN_LOG.search(message)
            if match and ("complete: nothing to do" in message or message.startswith("prepared ")):
                return match.group(1), "nothing to do" in message
        if time.monotonic() > deadline:
            return None, False
        time.sleep(1.0)


def _wait_for_completed_runs(api, count: int, serve: subprocess.Popen, serve_log: Path, limit_s: float,
                             tag: str | None = None) -> list[dict]:
    """Poll until `count` runs of the deployment (with `tag`, if given) are Completed; fail on a failed run."""
    deadline = time.monotonic() + limit_s
    runs: list[dict] = []
    while time.monotonic() < deadline:
        assert serve.poll() is None, f"`flows serve` exited ({serve.returncode}):\n{_tail(serve_log)}"
        runs = [r for r in _deployment_runs(api, DEPLOYMENT) if tag is None or tag in r["tags"]]
        failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
        assert not failed, f"run {failed[0]['name']} {failed[0]['state_type']}: {failed[0]['state']['message']}" \
                           f"\n{_tail(serve_log)}"
        done = sorted((r for r in runs if r["state_type"] == "COMPLETED"), key=lambda r: r["end_time"])
        if len(done) >= count:
            return done
        time.sleep(2.0)
    states = sorted({(r["state_type"], r["state_name"]) for r in runs})
    pytest.fail(f"{count} completed runs (tag {tag}) not seen within {limit_s} s; states {states}\n{_tail(serve_log)}")


def _remove_schedules(api, deployment: str) -> None:
    """Delete the deployment's schedules; the server deletes their pending runs with them."""
    found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": [deployment]}}}).json()[0]
    for schedule in found["schedules"]:
        api.delete(f"/deployments/{found['id']}/schedules/{schedule['id']}").raise_for_status()


# --- the slow test ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(SERVER_START_LIMIT_S + RUNS_LIMIT_S + WATCH_LIMIT_S + 180)
def test_served_deployment_runs_on_schedule_reuses_the_version_and_follows_the_watch(tmp_path):
    import httpx

    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    prefect_env = {"PREFECT_HOME": str(tmp_path / "prefect-home"),
                   "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
                   "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    fer_env = {"FER_ARTIFACTS": str(tmp_path / "artifacts"), "FER_MANIFESTS": str(tmp_path / "manifests"),
               "FER_CACHE": os.environ.get("FER_CACHE", str(tmp_path / "cache"))}
    server_command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    watched = tmp_path / "dataset-root"
    watched.mkdir()
    (watched / "labels.csv").write_text("relpath,label\n")
    serve_command = [sys.executable, "-m", "flows", "serve", "--dataset", "synthetic", "--name", DEPLOYMENT,
                     "--interval", str(INTERVAL_S), "--watch", str(watched), "--watch-every", "2",
                     *[a for o in SMALL for a in ("--set", o)]]
    serve_env = {**base, **prefect_env, **fer_env, "PYTHONUNBUFFERED": "1",
                 "PREFECT_RUNNER_POLL_FREQUENCY": "2"}     # pick due runs up within 2 s (default 10)
    survivors: dict[str, list[int]] = {}
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    with _started("server", server_command, {**base, **prefect_env}, server_log, survivors) as server, \
            httpx.Client(base_url=prefect_env["PREFECT_API_URL"], timeout=30) as api:
        startup_s = _wait_healthy(api, server, server_log)
        with _started("serve", serve_command, serve_env, serve_log, survivors) as serve:
            first, second = _wait_for_completed_runs(api, 2, serve, serve_log, RUNS_LIMIT_S)[:2]
            first_version, first_reused = _run_version(api, first["id"])
            second_version, second_reused = _run_version(api, second["id"])
            # the watch: with the schedule (and its backlog of late runs) removed, a change to the
            # watched folder alone must start a run
            _remove_schedules(api, DEPLOYMENT)
            (watched / "labels.csv").write_text("relpath,label\nhappy/new.png,1\n")
            watched_run = _wait_for_completed_runs(api, 1, serve, serve_log, WATCH_LIMIT_S, tag=WATCH_TAG)[0]
            watched_version, watched_reused = _run_version(api, watched_run["id"])
    assert not any(survivors.values()), f"processes left running after the stop: {survivors}"
    assert first["deployment_id"] == second["deployment_id"]
    assert first["auto_scheduled"] and second["auto_scheduled"], "both runs came from the schedule"

    assert first_version is not None and not first_reused, f"first run did not prepare: {first['state']}"
    lock = read_lock("synthetic", root=Path(fer_env["FER_MANIFESTS"]))
    assert lock["version"] == first_version
    version_dir = Path(fer_env["FER_ARTIFACTS"]) / "synthetic" / first_version
    assert (version_dir / "manifest.json").is_file() and lock["outputs"]["samples.parquet"]["size"] > 0
    assert second_reused and second_version == first_version, "unchanged data must give the same version"
    print(f"server healthy after {startup_s:.0f} s; first run {first['total_run_time']:.1f} s, "
          f"second (no-op) run {second['total_run_time']:.1f} s")
    assert second["total_run_time"] < first["total_run_time"]
    assert not watched_run["auto_scheduled"] and watched_reused and watched_version == first_version
