"""Writes that fail: a full disk, a read-only store, a log file that cannot be written, a SIGTERM.

Each ends in one line (StorageError, or the CLI's one `error:` line) naming the path, never in SIGBUS, an
OSError traceback or a logging traceback; the temporary Prefect server is stopped on every way out; a
rerun after space is freed completes the same version. The real-disk cases run where this process may
mount a small tmpfs (root in a container); the others everywhere.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.contract.crops import DATA_FILE, INDEX_FILE, create_crop_store, open_crops
from pipeline.contract.errors import StorageError
from pipeline.contract.lock import write_lock
from pipeline.store.hashing import hash_file

FAST = ["source.n=24", "shard_size=8", "align.detector=given", "align.crop_size=64", "landmarks.backend=provided",
        "graphs.backend=exact", "graphs.k=4", "noise.variants=[sym-0.30]", "report=false"]


def no_room(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_under_the_crop_store_is_one_line_with_the_space_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with pytest.raises(StorageError, match=r"no space left on device writing .*crops\.u8: it needs 288\.0 KiB, "
                                           r".* free there.*run again") as raised:
        create_crop_store(tmp_path / "crops", 24, 64)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "crops" / DATA_FILE).exists() and not (tmp_path / "crops" / INDEX_FILE).exists()
    monkeypatch.undo()                                            # space freed: the same call succeeds
    store = create_crop_store(tmp_path / "crops", 24, 64)
    store[3] = 7
    store.flush()
    assert open_crops(tmp_path / "crops").shape == (24, 64, 64, 3) and int(open_crops(tmp_path / "crops")[3].max()) == 7


def test_the_crop_store_is_allocated_not_sparse_and_a_short_one_is_remade(tmp_path):
    store = create_crop_store(tmp_path, 10, 32)                  # [10, 32, 32, 3]
    info = os.stat(tmp_path / DATA_FILE)
    assert info.st_size == 10 * 32 * 32 * 3 and info.st_blocks * 512 >= info.st_size, "blocks not allocated"
    del store
    with open(tmp_path / DATA_FILE, "r+b") as handle:            # a truncated store (a crash, a full disk)
        handle.truncate(100)
    store = create_crop_store(tmp_path, 10, 32)
    assert store.shape == (10, 32, 32, 3) and not np.asarray(store).any()


def test_the_cli_turns_a_full_disk_or_a_read_only_path_into_one_line():
    from flows.__main__ import storage_message

    full = storage_message(OSError(errno.ENOSPC, "No space left on device", "/data/artifacts/x/faces.parquet"))
    assert full.startswith("no space left on device writing /data/artifacts/x/faces.parquet:") and "free" in full
    read_only = storage_message(OSError(errno.EROFS, "Read-only file system", "/data/artifacts/x"))
    assert read_only.startswith("cannot write /data/artifacts/x: Read-only file system;")
    store = os.environ["FER_ARTIFACTS"]
    denied = storage_message(OSError(errno.EACCES, "Permission denied", f"{store}/synthetic/x.parquet"))
    assert denied.startswith(f"cannot write {store}/synthetic/x.parquet: Permission denied;")
    assert storage_message(OSError(errno.EACCES, "Permission denied", "/opt/OpenFace/FeatureExtraction")) is None
    assert storage_message(OSError(errno.ENOENT, "No such file or directory", "x")) is None


def test_a_log_file_on_a_full_disk_is_dropped_without_a_logging_traceback(capfd):
    from flows.logs import QuietFileHandler

    handler = QuietFileHandler("/dev/full", encoding="utf-8")     # every write: ENOSPC
    logger = logging.getLogger("fuzz.full-disk")
    logger.addHandler(handler)
    try:
        logger.error("first")
        logger.error("second")
    finally:
        logger.removeHandler(handler)
    assert handler.failed
    assert "Logging error" not in capfd.readouterr().err


def test_temporary_api_stops_the_server_on_sigterm_and_on_an_error(monkeypatch):
    """The server class is a fake (named so): only the stop on every way out is under test here."""
    from flows import runtime

    class FakeServer:
        started = stopped = 0
        api_url = "http://127.0.0.1:9/api"

        def start(self, timeout):
            FakeServer.started += 1

        def stop(self):
            FakeServer.stopped += 1

    fake_module = types.SimpleNamespace(SubprocessASGIServer=FakeServer)
    monkeypatch.setitem(sys.modules, "prefect.server.api.server", fake_module)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with runtime.temporary_api():
            os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(RuntimeError):
        with runtime.temporary_api():
            raise RuntimeError("a stage failed")
    assert (FakeServer.started, FakeServer.stopped) == (2, 2)
    assert signal.getsignal(signal.SIGTERM) is before and "PREFECT_API_URL" not in os.environ


# --- the real thing: a small tmpfs, a read-only bind mount (root only) -----------------------------------

def _mount(*args: str) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (umounted after): room for the parts of FAST, not for its crop store too."""
    path = tmp_path / "disk"
    path.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(path)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_real_full_disk_fails_in_one_line_and_the_rerun_after_freeing_space_completes_the_same_version(
        small_disk, monkeypatch):
    from pipeline.config import load_prepare_config
    from pipeline.contract.errors import FerError
    from pipeline.prepare import ThreadMapper, run_prepare

    monkeypatch.setenv("FER_ARTIFACTS", str(small_disk / "artifacts"))
    config = load_prepare_config(None, FAST)
    with pytest.raises((FerError, OSError)) as raised:
        run_prepare(config, ThreadMapper(2), progress=False)
    failed = raised.value
    assert isinstance(failed, StorageError) or failed.errno == errno.ENOSPC, repr(failed)
    assert "\n" not in str(failed)
    started = [p.name for p in (small_disk / "artifacts" / "synthetic").iterdir() if not p.name.startswith(("_", "."))]
    assert _mount("-o", "remount,size=8m", str(small_disk))
    summary = run_prepare(config, ThreadMapper(2), progress=False)
    assert [summary["version"]] == started
    from pipeline.verify import verify_version
    assert verify_version("synthetic").ok


@pytest.fixture
def read_only_store(tmp_path, monkeypatch):
    """A store holding one small version (lock and manifest), then made read-only: a bind mount as root,
    else file modes."""
    store = tmp_path / "store"
    version = store / "synthetic" / "0123456789abcdef"
    version.mkdir(parents=True)
    (version / "a.txt").write_text("hello")
    record = {"lock_format": "2", "outputs": {"a.txt": {"hash": hash_file(version / "a.txt"), "size": 5}},
              "num_classes": 7, "classes": [], "stages": {}, "stores": {}, "stage_versions": {}, "config": {},
              "stage_configs": {}, "crops": {}, "sources": {}, "summary": {}}     # every field a lock is read with
    write_lock("synthetic", "0123456789abcdef", record)
    (version / "manifest.json").write_text(json.dumps({"dataset": "synthetic", "version": "0123456789abcdef",
                                                       **record}))
    monkeypatch.setenv("FER_ARTIFACTS", str(store))
    if os.geteuid() == 0:
        if not (_mount("--bind", str(store), str(store)) and _mount("-o", "remount,ro,bind", str(store))):
            pytest.skip("cannot make a read-only bind mount here")
        yield store
        subprocess.run(["umount", "-l", str(store)], check=False)
    else:
        modes = [(path, path.stat().st_mode) for path in (store, store / "synthetic", version)]
        for path, _ in modes:
            path.chmod(0o555)
        yield store
        for path, mode in reversed(modes):
            path.chmod(mode)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=Path(__file__).resolve().parents[2],
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=300)


def test_a_read_only_store_lets_verify_run_and_refuses_prepare_in_one_line(read_only_store):
    verified = cli("verify", "--outputs-only")
    assert verified.returncode == 0 and "matches its lock" in verified.stdout, verified.stderr[-2000:]
    assert "Traceback" not in verified.stderr
    assert list((Path(os.environ["FER_CACHE"]) / "_logs").glob("verify-*.log")), "the log file went to the cache"
    refused = cli("prepare", "--set", "source.n=24")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert lines[0].startswith(f"error: the artefact root {read_only_store} is not writable"), lines
