"""The one atomic write (pipeline.contract.atomic): whole old file or whole new one, never a half."""
from __future__ import annotations

import json

import pytest

from pipeline.contract.atomic import atomic_path, write_json, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "sub" / "a.txt", "old\n")
    with pytest.raises(RuntimeError, match="disk trouble"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk trouble")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_temporary_names_are_hidden_and_json_is_sorted(tmp_path):
    with atomic_path(tmp_path / "v.npy", suffix=".npy") as tmp:
        assert tmp.name.startswith(".v.npy.") and tmp.name.endswith(".tmp.npy")
        tmp.write_bytes(b"x")
    assert (tmp_path / "v.npy").read_bytes() == b"x"
    write_json(tmp_path / "r.json", {"b": 1, "a": [2]})
    assert (tmp_path / "r.json").read_text() == json.dumps({"a": [2], "b": 1}, indent=2) + "\n"


def test_a_folder_finished_first_by_another_writer_wins(tmp_path):
    final = tmp_path / "part-1"
    with atomic_path(final, directory=True) as tmp:
        (tmp / "rows").write_text("first")
    with atomic_path(final, directory=True) as tmp:
        (tmp / "rows").write_text("second")
    assert (final / "rows").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-1"]
