"""What a sweep returns: its table (one row per point, `columns.COLUMNS`), each finished
point's details (per-layer cycles, widths, kept channels), the fronts, plots and report.

    result.table                                  # list of row dicts, in the sweep's order
    result.pareto(x="fps", y="accuracy_integer")  # the non-dominated rows, by x
    result.plot("front.svg", x="energy_uj")      # a front plot (SVG or PNG by the suffix)
    result.report("report.html")                  # one self-contained HTML file
    SweepResult.load("results/")                  # a sweep's folder, read back
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dopant.codesign._sweep import pareto, plots
from dopant.codesign._sweep.report import write_report
from dopant.codesign._sweep.store import Store
from dopant.support.files import write_atomic

# The fronts a sweep's folder gets: accuracy against speed, energy and the hardware's cost.
FRONTS = (
    ("fps", "accuracy_integer"),
    ("energy_uj", "accuracy_integer"),
    ("area_mm2", "accuracy_integer"),
)


@dataclass
class SweepResult:
    """A sweep's rows, its points' details (by point ID) and the spec's text."""

    rows: list[dict[str, Any]]
    details: dict[str, dict[str, Any]]
    spec_text: str = ""

    @property
    def table(self) -> list[dict[str, Any]]:
        return self.rows

    def pareto(self, x: str = "fps", y: str = "accuracy_integer") -> list[dict[str, Any]]:
        """The rows no other row beats on both `x` and `y` (lower is better for costs such as
        energy_uj, higher for the rest: `pareto.pareto_front`), by `x`."""
        return pareto.pareto_front(self.rows, x=x, y=y)

    def fronts(
        self, x: str = "fps", y: str = "accuracy_integer", by: str = "target"
    ) -> dict[str, list[dict[str, Any]]]:
        """The front of each value of the column `by` (each machine, by default), and of all
        rows under "all"."""
        return pareto.fronts(self.rows, x=x, y=y, by=by)

    def plot(self, path: str | Path, x: str = "fps", y: str = "accuracy_integer") -> Path:
        """The front plot of `y` against `x`, as SVG or PNG by `path`'s suffix."""
        target = Path(path)
        write_atomic(target, plots.front_plot(self.rows, x=x, y=y, fmt=target.suffix[1:]))
        return target

    def report(self, path: str | Path, title: str = "dopant sweep") -> Path:
        """One self-contained HTML file: the fronts, the tables, per-layer bars and plans."""
        return write_report(path, self.rows, self.details, title=title, spec_text=self.spec_text)

    def save(self, folder: str | Path) -> list[Path]:
        """table.csv, pareto.csv (each front's rows with the front's name), the front plots
        and report.html into `folder`, each written atomically."""
        store = Store(folder)
        written = [store.write_table("table.csv", self.rows)]
        front_rows = [
            {**row, "front": f"{y} vs {x}: {name}"}
            for x, y in FRONTS
            for name, rows in self.fronts(x, y).items()
            for row in rows
        ]
        written.append(store.write_table("pareto.csv", front_rows, extra=("front",)))
        for x, _ in FRONTS:
            written.append(self.plot(store.folder / f"front_{x}.svg", x=x))
        written.append(self.report(store.folder / "report.html"))
        return written

    @staticmethod
    def load(folder: str | Path) -> SweepResult:
        """The sweep saved in `folder`: its table's points, with their details."""
        store = Store(folder)
        order = [row["point"] for row in store.read_rows()]
        finished = store.finished()
        rows = [finished[p]["row"] for p in order if p in finished]
        details = {
            p: finished[p]["details"] for p in order if p in finished and finished[p]["details"]
        }
        return SweepResult(rows, details, store.spec_text())
