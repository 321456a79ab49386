"""What a prepare checks before it trusts what earlier runs left behind, and how it mends it.

- `clean_temporaries(plan)`: temporary files and part folders whose writer was killed (`.<name>.<pid>.tmp`,
  `.<name>.<pid>.tmp.npy`, part folders `.<part>.<pid>.tmp` and the older `.tmp-<part>-<pid>`) are removed
  from the version folder, the part stores and the lock folder. One whose writer is still alive is left alone.
- `intact(plan)`: a version whose manifest says it is complete is trusted only while its outputs still
  match the manifest: every listed file present, of its recorded size, and, if modified after the manifest
  was written, of its recorded content hash (so a check costs a stat per file, not a re-read; such a hash
  goes through the stat cache, so a copied version folder is re-read once, not on every run). A damaged
  version is reopened: the damaged files and the manifest are removed, and the run rebuilds them, per-image
  results from the part store (nothing recomputed when the parts are there), the rest from those.
- `point_latest(dataset, version)` (pipeline.contract.lock): `latest` names the version just completed (a
  run killed between the lock and the pointer left it on the old one).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from pipeline.contract.lock import manifests_root
from pipeline.contract.tables import MANIFEST
from pipeline.store.hashing import HashCache, default_hash_cache
from pipeline.store.plan import VersionPlan

log = logging.getLogger(__name__)
TEMPORARY = (re.compile(r"^\..+\.(?P<pid>\d+)\.tmp(\.[A-Za-z0-9]+)?$"),    # .<name>.<pid>.tmp[.npy]
             re.compile(r"^\.tmp-.+-(?P<pid>\d+)$"))                         # .tmp-<part>-<pid> (a part folder)


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    return True


def stray_temporaries(folder: Path, recursive: bool = False) -> list[Path]:
    """Temporary files and folders under `folder` whose writing process is gone."""
    if not folder.is_dir():
        return []
    found = []
    for path in (folder.rglob(".*") if recursive else folder.glob(".*")):
        for pattern in TEMPORARY:
            match = pattern.match(path.name)
            if match and not _writer_alive(int(match["pid"])):
                found.append(path)
                break
    return found


def clean_temporaries(plan: VersionPlan, manifests: Path | None = None) -> list[Path]:
    """Remove the stray temporaries of this version, its part stores and its lock folder; returns them."""
    folders = [(plan.version_dir, True), ((manifests or manifests_root()) / "versions" / plan.dataset, False)]
    folders += [(plan.store_dir(stage), False) for stage in plan.store_fingerprints]      # the per-image stores
    removed = []
    for folder, recursive in folders:
        for path in stray_temporaries(folder, recursive):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporary files left by killed runs: %s", len(removed),
                 ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))
    return removed


def damaged_outputs(version_dir: Path, cache: HashCache | None = None) -> list[str]:
    """Outputs the manifest lists that are missing or changed (see the module docstring); [] when intact.

    A manifest that cannot be read, or that names a path outside the version folder, damages the version.
    """
    manifest = version_dir / MANIFEST
    try:
        record = json.loads(manifest.read_text())
        written = manifest.stat().st_mtime_ns
        outputs = dict(record.get("outputs") or {})
        root = version_dir.resolve()
        if any(root not in (version_dir / name).resolve().parents for name in outputs):
            return [MANIFEST]
    except (OSError, ValueError, TypeError, AttributeError):
        return [MANIFEST]
    damaged, touched = [], {}
    for name, entry in sorted(outputs.items()):
        size, digest = (entry.get("size"), entry.get("hash")) if isinstance(entry, dict) else (entry, None)
        try:
            info = (version_dir / name).stat()
        except OSError:
            damaged.append(name)
            continue
        if info.st_size != size:
            damaged.append(name)
        elif digest and info.st_mtime_ns > written:          # written after the manifest: compare contents
            touched[name] = digest
    if touched:
        own = cache is None
        cache = cache or default_hash_cache()
        try:
            damaged += [name for name, digest in touched.items() if cache.hash(version_dir / name) != digest]
        finally:
            if own:
                cache.close()
    return sorted(damaged)


def intact(plan: VersionPlan) -> bool:
    """True when the complete version's outputs match its manifest; else reopen it for a rebuild, False."""
    damaged = damaged_outputs(plan.version_dir)
    if not damaged:
        return True
    log.warning("version %s of %s is damaged (%s missing or changed): rebuilding it, per-image results from the "
                "part store", plan.version, plan.dataset, ", ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else ""))
    (plan.version_dir / MANIFEST).unlink(missing_ok=True)        # incomplete until the rebuild finishes
    for name in damaged:
        if name != MANIFEST:
            (plan.version_dir / name).unlink(missing_ok=True)
    return False
