"""The table-driven harness: a Case is one odd input in a native layout and the verdict it must get.

Verdicts: `kept` (expect = the relpath kept), `quarantined` (expect = the reason; target = the relpath
the quarantine row names), `excluded` (expect = the exclusion key, counted `count` times), `refused`
(error = ConfigError or DataError, expect = a regex of its message). Every non-refused case also
asserts: input rows counted independently = kept + quarantined + excluded; kept relpaths are unique;
every baseline row is still kept (nothing shifted or mis-paired); nothing was written anywhere but
the adapter's cache; no quarantine detail names a machine path (same id, same bytes); and, for FERPlus,
every kept image holds the pixels of its own row.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.sources import SourceResult, prepare_source
from pipeline.sources.ferplus import decode_pixels
from pipeline.specs import load_spec

from .layouts import LAYOUTS


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[object], None]
    verdict: str                      # kept | quarantined | excluded | refused
    expect: str = ""
    target: str | None = None
    error: type | None = None
    count: int = 1
    spec: dict = field(default_factory=dict)
    check: Callable[[SourceResult], None] | None = None
    baseline: bool = True             # False: the case itself changes a baseline row
    xfail: str = ""


def params(cases: list[Case]) -> list:
    """pytest params with ids; an xfail case is strict (it must start passing when the fix lands)."""
    return [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
            for c in cases]


def entries(base: Path) -> list[str]:
    """Every path under base as a string, links not followed, walked with a stack (folders nest thousands
    deep in some cases: strings, not Paths, whose parsing costs a pass over every component)."""
    found, stack = [], [str(base)]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                found.append(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return sorted(found)


def snapshot(base: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path under base (outside `skip`) with its size and mtime; symlinks are not followed."""
    found, inside = {}, f"{skip}{os.sep}"
    for path in entries(base):
        if path == str(skip) or path.startswith(inside):
            continue
        info = os.lstat(path)
        found[path] = (info.st_size, info.st_mtime_ns)
    return found


def kinds(cases: list[Case]) -> int:
    return len({c.name for c in cases})


def run_case(adapter: str, case: Case, tmp_path: Path) -> SourceResult | None:
    layout = LAYOUTS[adapter](tmp_path / "data" / adapter)
    case.build(layout)
    root = layout.write()
    cache = tmp_path / "cache"
    before = snapshot(tmp_path, cache)
    spec = load_spec(adapter, overrides=case.spec or None)
    if case.verdict == "refused":
        with pytest.raises(case.error, match=case.expect):
            prepare_source(spec, root, None, work_dir=cache, progress=False)
        assert snapshot(tmp_path, cache) == before
        return None
    result = prepare_source(spec, root, None, work_dir=cache, progress=False)
    assert snapshot(tmp_path, cache) == before, "the adapter wrote outside its cache"
    details = " ".join(result.quarantine.column("detail").to_pylist())
    assert str(root.resolve()) not in details and str(cache) not in details, "machine paths in quarantine details"
    check_result(layout, case, result)
    return result


def check_result(layout, case: Case, result: SourceResult) -> None:
    kept = result.samples.column("relpath").to_pylist()
    quarantined = list(zip(result.quarantine.column("relpath").to_pylist(),
                           result.quarantine.column("reason").to_pylist()))
    excluded = sum(result.exclusions.values())
    assert result.inputs == layout.expected_inputs()
    assert len(kept) + len(quarantined) + excluded == result.inputs
    assert len(set(kept)) == len(kept)
    if case.baseline:
        assert set(layout.baseline) <= set(kept), f"lost baseline rows: {set(layout.baseline) - set(kept)}"
    if case.verdict == "kept":
        assert case.expect in kept, f"{case.expect!r} not kept; quarantine: {quarantined}"
    elif case.verdict == "quarantined":
        reasons = [reason for relpath, reason in quarantined if case.target is None or relpath == case.target]
        assert case.expect in reasons, f"want {case.target!r}: {case.expect}; quarantine: {quarantined}"
    elif case.verdict == "excluded":
        assert result.exclusions.get(case.expect, 0) == case.count, dict(result.exclusions)
    else:
        raise AssertionError(f"unknown verdict {case.verdict!r}")
    if layout.adapter == "ferplus":
        check_ferplus_pixels(layout, result)
    if case.check is not None:
        case.check(result)


def check_ferplus_pixels(layout, result: SourceResult) -> None:
    """Each kept FERPlus image holds the pixels of the fer2013.csv row paired with its label row."""
    for relpath in result.samples.column("relpath").to_pylist():
        with Image.open(result.image_root / relpath) as image:
            np.testing.assert_array_equal(np.asarray(image), decode_pixels(layout.expected[relpath]),
                                          err_msg=f"{relpath} holds another row's pixels")


def row_of(result: SourceResult, relpath: str) -> dict:
    """One kept sample as a dict (vectors as lists)."""
    table = result.samples.to_pandas().set_index("relpath")
    return table.loc[relpath].to_dict()
