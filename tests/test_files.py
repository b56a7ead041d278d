"""The one atomic-write helper: whole files or none, no temporary file left behind."""

from __future__ import annotations

import json
import math

import pytest

from tinyexp.files import atomic_write, write_json


def test_write_json_turns_non_finite_into_null_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1.5, "b": math.nan, "c": math.inf, "d": "x"})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": None, "d": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_takes_text_bytes_or_a_writer_and_creates_the_folder(tmp_path):
    assert atomic_write(tmp_path / "a" / "t.txt", "text").read_text() == "text"
    assert atomic_write(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "c.txt", lambda tmp: tmp.write_text("from a writer"))
    assert (tmp_path / "c.txt").read_text() == "from a writer"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.bin", "c.txt", "t.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = atomic_write(tmp_path / "keep.txt", "old")

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_written_files_get_the_umasks_permissions_not_private_ones(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "shared.txt", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
