"""What `HardwareMetrics` measures at an epoch (`HardwareSample`) and where it goes: a CSV file
with a fixed header (always available) and TensorBoard (when the `tensorboard` package is
installed: `pip install tensorboard`, or dopant's `tensorboard` extra)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dopant.runtime.stats import RunStats
from dopant.support.errors import InputError
from dopant.support.files import check_writable, write_atomic


@dataclass(frozen=True)
class HardwareSample:
    """One measurement of the model as it was at the end of `epoch`, on `target` (the machine's
    name): the timing model's numbers for one image (the program's batch), or, when the model did
    not compile, `error` and no numbers.

    `fps` is the clock over the cycles, `utilization` the roofline bound over the cycles
    (`RunStats.utilization`), `energy_uj` the timing model's total energy, `dram_bytes` the DRAM
    bytes read and written. `bit_exact` is None unless the callback ran the functional simulator
    (`values=True`); then True (a difference is an `error`). `overhead_seconds` is the wall time
    the call spent measuring, from the import to the statistics (writing the logs after it takes
    milliseconds). `stats` is the whole `RunStats` (per layer, per engine) of a measured sample.
    """

    epoch: int
    target: str
    cycles: int | None
    latency_us: float | None
    fps: float | None
    utilization: float | None
    energy_uj: float | None
    dram_bytes: int | None
    macs: int | None
    bit_exact: bool | None
    overhead_seconds: float
    error: str | None = None
    stats: RunStats | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def measured(
        epoch: int, stats: RunStats, bit_exact: bool | None, seconds: float
    ) -> HardwareSample:
        traffic = stats.traffic_bytes
        return HardwareSample(
            epoch=epoch,
            target=stats.config_name,
            cycles=stats.total_cycles,
            latency_us=stats.seconds * 1e6,
            fps=stats.clock_mhz * 1e6 / stats.total_cycles,
            utilization=stats.utilization,
            energy_uj=stats.energy_pj["total"] / 1e6,
            dram_bytes=traffic["dram_read_bytes"] + traffic["dram_write_bytes"],
            macs=stats.macs,
            bit_exact=bit_exact,
            overhead_seconds=seconds,
            stats=stats,
        )

    @staticmethod
    def failed(epoch: int, target: str, error: str, seconds: float) -> HardwareSample:
        return HardwareSample(
            epoch, target, None, None, None, None, None, None, None, None, seconds, error
        )

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        """One line for a log: the numbers, or the error."""
        if self.error is not None:
            return f"epoch {self.epoch}: hardware metrics on '{self.target}' failed: {self.error}"
        assert self.cycles is not None and self.latency_us is not None and self.fps is not None
        checked = "; outputs bit-exact" if self.bit_exact else ""
        return (
            f"epoch {self.epoch}: '{self.target}' {self.cycles:,} cycles = {self.latency_us:,.1f}"
            f" us ({self.fps:,.0f} FPS), utilization {self.utilization:.1%}, "
            f"{self.energy_uj:,.3f} uJ, {self.dram_bytes:,} DRAM bytes{checked} "
            f"(measured in {self.overhead_seconds:.2f} s)"
        )


# The CSV's header: a file with another header is not appended to.
CSV_COLUMNS = (
    "epoch",
    "target",
    "cycles",
    "latency_us",
    "fps",
    "utilization",
    "energy_uj",
    "dram_bytes",
    "macs",
    "bit_exact",
    "overhead_seconds",
    "error",
)

# What goes to TensorBoard, each as the scalar `hardware/<name>` at step = epoch.
SCALARS = ("cycles", "latency_us", "fps", "utilization", "energy_uj", "dram_bytes")


def _cell(value: Any) -> str:
    """A CSV cell: empty for None, true/false, floats as repr (they read back exactly), errors
    on one line."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return " ".join(str(value).split())


def csv_row(sample: HardwareSample) -> list[str]:
    return [_cell(getattr(sample, column)) for column in CSV_COLUMNS]


class CsvLog:
    """The samples of a run in a CSV file: the fixed header (`CSV_COLUMNS`), one row per sample.
    Each row rewrites the whole file through a temporary file (`write_atomic`), so a crash while
    writing leaves the previous file, never half a row.

    With `append`, the rows of an existing file with the same header are kept (a resumed run);
    otherwise the file is replaced at the first row."""

    def __init__(self, path: str | os.PathLike[str], append: bool = False) -> None:
        self.path = Path(path)
        check_writable(self.path)
        self.rows: list[list[str]] = []
        if append and self.path.is_file():
            self.rows = _read_rows(self.path)

    def add(self, sample: HardwareSample) -> None:
        self.rows.append(csv_row(sample))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(self.rows)
        write_atomic(self.path, text.getvalue())


def _read_rows(path: Path) -> list[list[str]]:
    """The rows under the header of an existing log; InputError if its header is not ours."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    if tuple(rows[0]) != CSV_COLUMNS:
        raise InputError(
            f"cannot append to '{path}': its header is not the hardware metrics' "
            f"({','.join(CSV_COLUMNS)}); give another csv path or append=False to replace it."
        )
    return rows[1:]


TENSORBOARD_HINT = "pip install tensorboard (or dopant's extra: pip install 'dopant[tensorboard]')"


def tensorboard_writer(spec: Any) -> tuple[Any, bool]:
    """(writer, whether we own it) for `spec`: an object with `add_scalar` (a SummaryWriter the
    training loop already writes to) as it is, or a folder for a new
    `torch.utils.tensorboard.SummaryWriter`; InputError if the tensorboard package is missing."""
    if hasattr(spec, "add_scalar"):
        return spec, False
    if not isinstance(spec, str | os.PathLike):
        raise InputError(f"tensorboard is a folder or a SummaryWriter, got {type(spec).__name__}.")
    try:
        # Optional dependency: imported only when TensorBoard logging is asked for.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError(
            f"TensorBoard logging to '{spec}' needs the tensorboard package: {TENSORBOARD_HINT}; "
            "or leave tensorboard=None (the CSV log needs nothing)."
        ) from None
    return SummaryWriter(log_dir=str(spec)), True


def add_to_tensorboard(writer: Any, sample: HardwareSample, scalars: Sequence[str]) -> None:
    """`hardware/<name>` scalars of a measured sample at step `epoch`, or the error as text."""
    if sample.error is not None:
        if hasattr(writer, "add_text"):
            writer.add_text("hardware/error", sample.error, sample.epoch)
    else:
        for name in scalars:
            writer.add_scalar(f"hardware/{name}", getattr(sample, name), sample.epoch)
    writer.add_scalar("hardware/overhead_seconds", sample.overhead_seconds, sample.epoch)
    if hasattr(writer, "flush"):
        writer.flush()
