"""A sweep's output folder, and what makes it resumable:

    sweep.json        the sweep it holds: its spec's digest, model, dopant version, points
    spec.toml         the spec as given (the report shows it)
    points/ID.json    one finished point: its row and details, written as it finishes
    table.csv         every point's row, in the sweep's order (`columns.COLUMNS`)
    pareto.csv        the fronts' rows, with the front they lie on
    report.html, *.svg, *.png   the report and its plots

A point's ID is the content hash of what it computes from (`point_id`), so a finished point is
never run again: an interrupted sweep resumes where it stopped, and a widened one reuses the
points it shares. A folder holding another sweep (another spec) is refused unless `resume`:
its points are then reused where the IDs match. Every file is written to a temporary name and
renamed (`support.files.write_atomic`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from dopant.codesign._sweep.columns import NAMES, parse_cell
from dopant.codesign._sweep.spec import SweepSpec, canonical_json
from dopant.support.errors import InputError
from dopant.support.files import json_text, write_atomic

MANIFEST = "sweep.json"
POINTS = "points"


def point_id(identity: dict[str, Any]) -> str:
    """12 hex digits of SHA-256 over the canonical JSON of what the point computes from: its
    settings, its machine's fields, the model and data digests and dopant's version."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:12]


def array_digest(*arrays: np.ndarray) -> str:
    """SHA-256 of arrays' dtypes, shapes and bytes: the data a point saw."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def file_digest(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


class Store:
    """The output folder of one sweep (module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def check(self, spec: SweepSpec, resume: bool) -> None:
        """InputError (before any work) when the folder is a file, holds files that are no
        sweep's, or holds another spec's sweep and `resume` is False."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"output '{self.folder}' is a file; give a folder.")
        if not self.folder.is_dir() or not any(self.folder.iterdir()):
            return
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise InputError(
                f"output folder '{self.folder}' holds files that are not a sweep's; give an "
                "empty or new folder."
            )
        if self._manifest(manifest).get("spec") != spec.digest() and not resume:
            raise InputError(
                f"output folder '{self.folder}' holds another sweep's results (another spec); "
                "give a new folder, or resume (--resume) to reuse its finished points."
            )

    def open(self, spec: SweepSpec, identity: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Make the folder this sweep's (after `check`) and return its finished points."""
        (self.folder / POINTS).mkdir(parents=True, exist_ok=True)
        manifest = {"spec": spec.digest(), **identity}
        write_atomic(self.folder / MANIFEST, json_text(manifest))
        write_atomic(self.folder / "spec.toml", spec.text)
        return self.finished()

    def finished(self) -> dict[str, dict[str, Any]]:
        """Point ID -> {"row": ..., "details": ...} of every point saved here."""
        found = {}
        for path in sorted((self.folder / POINTS).glob("*.json")):
            try:
                found[path.stem] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise InputError(
                    f"point file '{path}' cannot be read ({error}); delete it."
                ) from None
        return found

    def save_point(self, point: str, row: dict[str, Any], details: dict[str, Any] | None) -> None:
        data = {"row": row, "details": details}
        write_atomic(self.folder / POINTS / f"{point}.json", json.dumps(data, indent=1) + "\n")

    def write_table(
        self, name: str, rows: list[dict[str, Any]], extra: tuple[str, ...] = ()
    ) -> Path:
        """`rows` as a CSV of the table's columns (and `extra` ones first), atomically."""
        text = io.StringIO()
        writer = csv.DictWriter(text, (*extra, *NAMES), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in (*extra, *NAMES)})
        path = self.folder / name
        write_atomic(path, text.getvalue())
        return path

    def read_rows(self) -> list[dict[str, Any]]:
        """The rows of the folder's table.csv; InputError when it holds no finished sweep."""
        path = self.folder / "table.csv"
        if not (self.folder / MANIFEST).is_file() or not path.is_file():
            raise InputError(
                f"'{self.folder}' holds no finished sweep (no {MANIFEST} and table.csv); run "
                "`dopant sweep SPEC -o FOLDER` first."
            )
        return read_table(path)

    def spec_text(self) -> str:
        path = self.folder / "spec.toml"
        return path.read_text() if path.is_file() else ""

    @staticmethod
    def _manifest(path: Path) -> dict[str, Any]:
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
            raise InputError(f"'{path}' is not a sweep's manifest ({error}).") from None


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """A table.csv's rows with typed values (None for empty cells)."""
    with Path(path).open(newline="") as f:
        return [
            {k: parse_cell(k, v) for k, v in r.items() if k in NAMES} for r in csv.DictReader(f)
        ]
