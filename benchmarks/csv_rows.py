"""The benchmarks' result CSVs: a row appended as each run finishes, so an interrupted benchmark
resumes from the rows it finds."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of `path`, none when it does not exist yet."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def append_row(path: Path, fields: Sequence[str], row: Mapping[str, object]) -> None:
    """`row`'s `fields` (empty where it has none) as a line of `path`, the header first when the
    file is new."""
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in fields})
