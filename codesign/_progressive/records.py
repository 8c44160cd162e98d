"""What a progressive run returns: a record per stage (accuracy before and after its fine-tune,
the drop from the stage before, MACs, measured cycles, training time), the final network and
its binary, and how they are printed and written to a folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.target import AccelConfig
from dopant.codesign._progressive.schedule import Stage
from dopant.compiler.driver import CompiledModel
from dopant.compiler.irio import ir_text
from dopant.support.files import json_text, write_files


@dataclass(frozen=True)
class StageRecord:
    """One finished stage. `top1_start` is the integer network's top-1 as the stage began
    (quantized at its widths, started from the last stage), `top1` after its fine-tune, `drop`
    the fall from the previous stage's `top1` (the float model's for the first stage), in
    fractions (0.012 = 1.2 points); all None without evaluation data. `cycles` is the latency
    the timing model measured for the stage's network on the target, `macs` its MACs per image,
    `losses` the mean training loss of each epoch, `carried` what it took over from the stage
    before (`_progressive.carry.Carried`, as text; empty for the first)."""

    index: int
    stage: str
    epochs: int
    top1_start: float | None
    top1: float | None
    drop: float | None
    macs: int
    cycles: int
    train_seconds: float
    losses: list[float]
    carried: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> StageRecord:
        return StageRecord(**data)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}"


def stage_table(records: list[StageRecord], float_top1: float | None) -> str:
    """The per-stage table: stage, epochs, top-1 as it began and after fine-tuning, the drop in
    points from the row above, MACs, cycles and training seconds."""
    header = (
        f"{'stage':<18} {'epochs':>6} {'top-1 start':>11} {'top-1':>8} {'drop':>7} "
        f"{'MACs':>12} {'cycles':>10} {'train s':>8}"
    )
    lines = [header, "-" * len(header)]
    lines.append(f"{'float':<18} {'':>6} {'':>11} {_percent(float_top1):>8}")
    for r in records:
        lines.append(
            f"{r.stage:<18} {r.epochs:>6} {_percent(r.top1_start):>11} {_percent(r.top1):>8} "
            f"{_points(r.drop):>7} {r.macs:>12,} {r.cycles:>10,} {r.train_seconds:>8.1f}"
        )
    return "\n".join(lines)


@dataclass
class ProgressiveResult:
    """A progressive run (see `codesign.progressive.progressive`): the stages and their records,
    the float model's top-1 on the evaluation data (None without it), the final integer IR and
    its binary for `config`, the batch-norm-folded float model holding the final latent weights
    (pruned as the schedule said), the settings that shaped the numbers (epochs, rate, seed,
    quantize and pruning options, target), and how many stages were loaded from a saved run."""

    config: AccelConfig
    schedule: list[Stage]
    options: dict[str, Any]
    float_top1: float | None
    records: list[StageRecord]
    quantized: ModuleOp
    compiled: CompiledModel
    model: nn.Module
    resumed: int = 0

    @property
    def top1(self) -> float | None:
        """The last stage's top-1: the final network's."""
        return self.records[-1].top1

    @property
    def cycles(self) -> int:
        """The final binary's measured latency in cycles per image."""
        return self.compiled.program.stats.total_cycles

    def table(self) -> str:
        return stage_table(self.records, self.float_top1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.config.name,
            "schedule": [str(s) for s in self.schedule],
            "options": self.options,
            "float_top1": self.float_top1,
            "stages": [r.to_dict() for r in self.records],
            "cycles": self.cycles,
            "resumed_stages": self.resumed,
        }

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Path]:
        """Write quantized.mlir (the final integer IR), model.dpb (its binary) and stages.json
        (`to_dict`, with `extra` added) into `folder`; the paths written, by name."""
        report = {**self.to_dict(), **(extra or {})}
        return write_files(
            folder,
            {
                "quantized": ("quantized.mlir", ir_text(self.quantized)),
                "binary": ("model.dpb", self.compiled.binary),
                "stages": ("stages.json", json_text(report)),
            },
        )
