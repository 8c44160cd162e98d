"""Atomic writes: a failure never leaves a half-written artifact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dopant.support.files import json_text, write_atomic, write_files


def test_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    write_atomic(target, b"old contents")
    write_atomic(target, "new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    write_atomic(target, b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_files_creates_the_folder_and_returns_each_path(tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder"
    paths = write_files(out, {"ir": ("a.mlir", "text"), "bin": ("a.dpb", b"\x00\x01")})
    assert paths == {"ir": out / "a.mlir", "bin": out / "a.dpb"}
    assert paths["ir"].read_text() == "text" and paths["bin"].read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in out.iterdir()) == ["a.dpb", "a.mlir"]  # no temporaries
    assert json_text({"a": [1, 2]}) == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
