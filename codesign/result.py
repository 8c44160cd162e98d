"""What the co-design loop returns: its rounds, its choice, the binary and the accuracy kept,
and how they are written to a folder (`CodesignResult.save`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.target import AccelConfig
from dopant.codesign.budget import LatencyBudget
from dopant.codesign.sensitivity import Sensitivity
from dopant.compiler.driver import CompiledModel
from dopant.compiler.irio import ir_text
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.runtime.stats import RunStats
from dopant.support.files import json_text, write_files


@dataclass(frozen=True)
class Round:
    """One compile-and-measure round: the budget the selector was given, the scale its
    prediction used (measured cycles per cycle of the table's per-row sum, from the network
    measured last: `choose.Correction`), what it predicted for its answer and what the timing
    model measured."""

    index: int
    selector_budget_cycles: float
    scale: float
    predicted_cycles: int
    measured_cycles: int
    kept: dict[str, int]
    bits: dict[str, tuple[int, int]]
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.index,
            "selector_budget_cycles": self.selector_budget_cycles,
            "scale": self.scale,
            "predicted_cycles": self.predicted_cycles,
            "measured_cycles": self.measured_cycles,
            "kept": self.kept,
            "bits": {path: f"w{w}a{a}" for path, (w, a) in self.bits.items()},
            "value": self.value,
        }


@dataclass
class CodesignResult:
    """The co-design loop's answer (see `codesign.loop.codesign`).

    `stages` holds the IR of each step: `imported` (float, as traced), `selected` (the same with
    the choice as attributes: `qnn.pruning_plan`, `#qnn.bits` per layer, and the saliency,
    sensitivity and budget it was made from), `pruned`, `quantized`, then the compiler's `tiled`
    and `accel`. `accuracy` maps labels ("float", "W8A8 dense", "float pruned", "float
    fine-tuned", "integer") to top-1 on the evaluation data, when some was given.
    """

    config: AccelConfig
    budget: LatencyBudget
    budget_cycles: int
    dense_stats: RunStats
    plan: PruningPlan | None
    bits: dict[str, tuple[int, int]]
    rounds: list[Round]
    compiled: CompiledModel
    model: nn.Module
    converged: bool
    message: str
    stages: dict[str, ModuleOp] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    scores: dict[str, np.ndarray] | None = None  # the saliency the channels were chosen by
    sensitivity: Sensitivity | None = None  # the sensitivity the widths were chosen by

    @property
    def dense_cycles(self) -> int:
        """The dense W8A8 network's measured cycles on the target (the budget's reference)."""
        return self.dense_stats.total_cycles

    @property
    def binary(self) -> bytes:
        return self.compiled.binary

    @property
    def stats(self) -> RunStats:
        """The final binary's measured statistics (the simulator's timing model)."""
        return self.compiled.program.stats

    @property
    def cycles(self) -> int:
        return self.stats.total_cycles

    @property
    def fps(self) -> float:
        return 1.0 / self.stats.seconds

    def report(self) -> dict[str, Any]:
        """Everything above that is not IR or bytes, as JSON-ready data."""
        return {
            "target": self.config.name,
            "budget": str(self.budget),
            "budget_cycles": self.budget_cycles,
            "dense_w8a8_cycles": self.dense_cycles,
            "cycles": self.cycles,
            "fps": self.fps,
            "speedup": self.dense_cycles / self.cycles,
            "converged": self.converged,
            "message": self.message,
            "rounds": [r.to_dict() for r in self.rounds],
            "kept": {g.id: [len(g.keep), g.size] for g in self.plan.groups} if self.plan else {},
            "bits": {path: f"w{w}a{a}" for path, (w, a) in self.bits.items()},
            "accuracy": self.accuracy,
            "seconds": self.seconds,
            "stats": {
                "total_cycles": self.stats.total_cycles,
                "macs": self.stats.macs,
                "energy_pj": self.stats.energy_pj,
                "traffic_bytes": self.stats.traffic_bytes,
                "layers": [layer.to_dict() for layer in self.stats.layers],
            },
        }

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write the binary, the IR of the selected and quantized stages, the plan (with no
        groups when nothing was pruned), the bit widths and the report into `folder` (created
        if missing), each file atomically; the paths written, by what they hold."""
        bits = {path: f"w{w}a{a}" for path, (w, a) in self.bits.items()}
        files = write_files(
            folder,
            {
                "binary": ("model.dpb", self.binary),
                "selected": ("selected.mlir", ir_text(self.stages["selected"])),
                "quantized": ("quantized.mlir", ir_text(self.stages["quantized"])),
                "bits": ("bits.json", json_text(bits)),
                "report": ("report.json", json_text(self.report())),
            },
        )
        files["plan"] = Path(folder) / "plan.json"
        (self.plan or PruningPlan(())).save(str(files["plan"]))  # no groups: nothing pruned
        return files
