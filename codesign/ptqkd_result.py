"""What stage-by-stage PTQ with distillation returns (`codesign.ptqkd.ptq_kd`): the per-stage
losses, the stitched network and its binary, and how they are printed and written to a folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xdsl.dialects.builtin import ModuleOp

from dopant.codesign._ptqkd.stages import Stage
from dopant.compiler.driver import CompiledModel
from dopant.compiler.irio import ir_text
from dopant.support.files import json_text, write_files


@dataclass(frozen=True)
class StageReport:
    """One stage's numbers, all MSE against the float teacher's output feature of the stage on
    the training images: `loss_before` / `loss_after` training with the teacher's input
    feature, `ptq_stitched` / `kd_stitched` when the stages of plain PTQ / of the stitched
    network run one after the other from the images (each on its predecessor's output)."""

    stage: Stage
    loss_before: float
    loss_after: float
    ptq_stitched: float
    kd_stitched: float
    epoch_losses: tuple[float, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        s = self.stage
        return {
            "stage": s.index + 1,
            "begins": s.begins or "input",
            "ends": s.ends or "output",
            "layers": list(s.layers),
            "macs": s.macs,
            "trained_parameters": list(s.parameters),
            "loss_before": self.loss_before,
            "loss_after": self.loss_after,
            "ptq_stitched": self.ptq_stitched,
            "kd_stitched": self.kd_stitched,
            "epoch_losses": list(self.epoch_losses),
            "seconds": self.seconds,
        }


@dataclass
class PtqKdResult:
    """The answer of `ptq_kd` (or of its baseline `whole_network_kd`, one stage).

    `quantized` is the stitched integer IR (op paths as the quantized network's), `ptq` the
    plain PTQ network it started from, `compiled` the stitched network compiled for the target
    (checked bit for bit against the integer reference). `accuracy` ("float", "PTQ" and the
    result's `label`) and `logits_mse` (the last two) are on the evaluation data, when some was
    given; `recipe` holds the training options and the number of training images.
    """

    bits: str
    stages: list[StageReport]
    quantized: ModuleOp
    ptq: ModuleOp
    compiled: CompiledModel
    workers: int
    address: str | None
    recipe: dict[str, Any]
    accuracy: dict[str, float] = field(default_factory=dict)
    logits_mse: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    baseline: PtqKdResult | None = None  # `whole_network_kd` on the same data, if it was run

    @property
    def label(self) -> str:
        """How this result's network is named in tables: stage-wise or whole-network KD."""
        k = len(self.stages)
        return f"PTQ-KD, {k} stages" if k > 1 else "whole-network KD"

    @property
    def binary(self) -> bytes:
        return self.compiled.binary

    def report(self) -> dict[str, Any]:
        """Everything but IR and bytes, as JSON-ready data."""
        return {
            "method": self.label,
            "bits": self.bits,
            "workers": self.workers,
            "address": self.address,
            "recipe": self.recipe,
            "stages": [s.to_dict() for s in self.stages],
            "accuracy": self.accuracy,
            "logits_mse": self.logits_mse,
            "cycles": self.compiled.program.stats.total_cycles,
            "seconds": self.seconds,
            **({"baseline": self.baseline.report()} if self.baseline else {}),
        }

    def table(self) -> str:
        """The per-stage table, then the accuracies (and the baseline's, if it ran): what
        `dopant ptq-kd` prints."""
        header = (
            f"{'stage':<6}{'from':<10}{'to':<10}{'layers':>7}{'MACs':>12}"
            f"{'MSE before':>12}{'MSE after':>12}{'PTQ chained':>13}{'KD chained':>12}{'s':>7}"
        )
        lines = [
            f"{self.label} at {self.bits}: {self.recipe['epochs']} epoch(s) on "
            f"{self.recipe['images']} images; MSE against the float teacher's stage output, "
            "with the teacher's input (before / after training) and with each stage on the "
            "output of the one before (chained: plain PTQ / stitched)",
            header,
            "-" * len(header),
        ]
        for r in self.stages:
            s = r.stage
            lines.append(
                f"{s.index + 1:<6}{s.begins or 'input':<10}{s.ends or 'output':<10}"
                f"{len(s.layers):>7}{s.macs:>12,}{r.loss_before:>12.4g}{r.loss_after:>12.4g}"
                f"{r.ptq_stitched:>13.4g}{r.kd_stitched:>12.4g}{r.seconds:>7.1f}"
            )
        if self.accuracy:
            lines.append("")
            for label, top1 in self.accuracy.items():
                mse = self.logits_mse.get(label)
                shown = "" if mse is None else f"   logits MSE {mse:.4g}"
                lines.append(f"  {label:<22} top-1 {top1:.2%}{shown}")
        if self.baseline is not None:
            lines += ["", self.baseline.table()]
        return "\n".join(lines)

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write the stitched IR (`quantized.mlir`), its binary (`model.dpb`) and the report
        (`stages.json`) into `folder` (created if missing), each atomically; the paths by what
        they hold."""
        return write_files(
            folder,
            {
                "quantized": ("quantized.mlir", ir_text(self.quantized)),
                "binary": ("model.dpb", self.binary),
                "report": ("stages.json", json_text(self.report())),
            },
        )
