"""Atomic file writes: an artifact is written to a temporary name and renamed into place, so a
failure never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from dopant.support.errors import InputError


def check_writable(path: str | os.PathLike[str]) -> None:
    """InputError unless `path`'s folder exists and `path` is not a folder: checked before the
    work whose result goes there."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise InputError(
            f"cannot write '{target}': the folder '{folder}' does not exist; "
            "create it or choose another output path."
        )
    if target.is_dir():
        raise InputError(f"cannot write '{target}': it is a folder; give a file name.")


def make_folder(path: str | os.PathLike[str], option: str = "-o") -> None:
    """Create the folder `path` (with its parents) that results go into, before the work;
    InputError naming the command's `option` when it is a file or cannot be created."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {path} is a file; give a folder for the results.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the folder {option} {path}: {error.strerror}.") from None


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename it."""
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    check_writable(target)
    folder = target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise InputError(f"cannot write '{target}': {error.strerror}.") from error
    try:
        # mkstemp makes the file owner-only; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_files(
    folder: str | os.PathLike[str], files: Mapping[str, tuple[str, bytes | str]]
) -> dict[str, Path]:
    """Each (file name, contents) of `files` into `folder` (created if missing), each written
    atomically; the paths by the same keys."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, (name, data) in files.items():
        paths[key] = out / name
        write_atomic(paths[key], data)
    return paths


def json_text(data: object) -> str:
    """`data` as the JSON text dopant writes: indented two spaces, ending in a newline."""
    return json.dumps(data, indent=2) + "\n"
