"""Scheduled runs as a user starts them: `make server` and `make serve ... INTERVAL= ARGS="--watch ..."`.

The slow test starts the server on a free port and checks that its UI is told that port's API
(`/ui-settings`), sees two scheduled runs complete (the first prepares the version and writes its lock, the
second finds it complete and ends at once with the same id), checks in headless Chromium that the UI's
flow-runs page lists the completed runs (FER_UI_SCREENSHOT=<png> keeps its screenshot), then removes the
schedule and checks that a change to the watched folder alone starts a run. It starts both processes
itself (each in its own process group, with its own PREFECT_HOME, SQLite database and artefact folders
under tmp_path), follows the deployment's flow runs through the server's REST API, and stops everything it
started on the way out (context managers): SIGTERM to the group, then SIGKILL after a grace period, then a
check that no process of either group is left.

The fast test does what the runner does with a served flow: load it in a freshly spawned process and
validate the run's parameters there (the failure that broke every scheduled run).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from process_group import free_port, started

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


def test_flow_parameters_validate_in_a_freshly_spawned_process():
    """What a served deployment's runner does: cloudpickle the flow, load it in a new interpreter (spawn),
    validate the run's JSON parameters there. A string annotation the unpickled function cannot resolve
    (`from __future__ import annotations` in flows/prepare.py) failed every scheduled run this way."""
    import cloudpickle

    from flows.schedule import served_flow

    config = load_prepare_config(None, SMALL, dataset="synthetic")
    flow = served_flow(config)                                                           # as serve_prepare
    parameters = json.dumps({"config": dataclasses.asdict(config)})                     # as the API stores them
    child = ("import dataclasses, json, sys, cloudpickle\n"
             "flow = cloudpickle.loads(sys.stdin.buffer.read())\n"
             "checked = flow.validate_parameters(json.loads(sys.argv[1]))\n"
             "print(type(checked['config']).__name__, json.dumps(dataclasses.asdict(checked['config'])))\n")
    done = subprocess.run([sys.executable, "-c", child, parameters], input=cloudpickle.dumps(flow),
                          capture_output=True, cwd=PROJECT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    kind, _, fields = done.stdout.decode().strip().splitlines()[-1].partition(" ")
    assert kind == "PrepareConfig" and json.loads(fields) == json.loads(parameters)["config"]


# --- helpers of the slow test ----------------------------------------------------------------------

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


def _check_flow_runs_page(ui_url: str, runs: list[dict]) -> bool:
    """The UI (as a browser runs it) reaches the API and lists these completed runs; keep a screenshot.

    False when chromium is missing (nothing checked)."""
    from bench.report_screenshot import CHROMIUM, rendered_text, screenshot

    if not os.access(CHROMIUM, os.X_OK):
        return False
    for wait_ms in (20000, 40000, 60000):      # a loaded machine may dump the page before the list arrived
        text = rendered_text(f"{ui_url}/runs", wait_ms=wait_ms)
        assert "Can't connect" not in text, f"the UI cannot reach its API: {text[:500]}"
        missing = [r["name"] for r in runs if r["name"] not in text]
        if not missing and "Completed" in text:
            break
    assert not missing and "Completed" in text, f"runs {missing} not on the flow-runs page: {text[:1500]}"
    keep = os.environ.get("FER_UI_SCREENSHOT")
    if keep:
        screenshot(f"{ui_url}/runs", Path(keep), 1440, 1500, wait_ms=20000)
    return True


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

    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    prefect_env = {"PREFECT_HOME": str(tmp_path / "prefect-home"),
                   "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
                   "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}   # the client's; `make server` sets the UI's
    fer_env = {"FER_ARTIFACTS": str(tmp_path / "artifacts"), "FER_MANIFESTS": str(tmp_path / "manifests"),
               "FER_CACHE": os.environ.get("FER_CACHE", str(tmp_path / "cache"))}
    make = ["make", "--no-print-directory", f"PY={sys.executable}", f"PREFECT_PORT={port}"]
    server_command = [*make, "server"]
    watched = tmp_path / "dataset-root"
    watched.mkdir()
    (watched / "labels.csv").write_text("relpath,label\n")
    args = ["--name", DEPLOYMENT, "--watch", str(watched), "--watch-every", "2",
            *[a for o in SMALL for a in ("--set", o)]]
    serve_command = [*make, "serve", "DATASET=synthetic", f"INTERVAL={INTERVAL_S}", f"ARGS={shlex.join(args)}"]
    serve_env = {**base, **prefect_env, **fer_env, "PYTHONUNBUFFERED": "1",
                 "PREFECT_RUNNER_POLL_FREQUENCY": "2"}     # pick due runs up within 2 s (default 10)
    survivors: dict[str, list[int]] = {}
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    with started("server", server_command, {**base, **prefect_env}, server_log, survivors) as server, \
            httpx.Client(base_url=prefect_env["PREFECT_API_URL"], timeout=30) as api:
        startup_s = _wait_healthy(api, server, server_log)
        ui_url = f"http://127.0.0.1:{port}"
        ui_settings = httpx.get(f"{ui_url}/ui-settings", timeout=30).json()
        assert ui_settings["api_url"] == f"{ui_url}/api", f"the UI is sent to another API: {ui_settings}"
        with started("serve", serve_command, serve_env, serve_log, survivors) as serve:
            first, second = _wait_for_completed_runs(api, 2, serve, serve_log, RUNS_LIMIT_S)[:2]
            first_version, first_reused = _run_version(api, first["id"])
            second_version, second_reused = _run_version(api, second["id"])
            # the watch: with the schedule (and its backlog of late runs) removed, a change to the
            # watched folder alone must start a run
            _remove_schedules(api, DEPLOYMENT)
            (watched / "labels.csv").write_text("relpath,label\nhappy/new.png,1\n")
            watched_run = _wait_for_completed_runs(api, 1, serve, serve_log, WATCH_LIMIT_S, tag=WATCH_TAG)[0]
            watched_version, watched_reused = _run_version(api, watched_run["id"])
            page_checked = _check_flow_runs_page(ui_url, [first, second, watched_run])
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
    if not page_checked:
        pytest.skip("all passed but the UI's flow-runs page: that check needs chromium (apt-get install chromium)")
