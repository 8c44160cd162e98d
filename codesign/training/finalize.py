"""After training with latency in the loss: the soft choices made hard, applied and measured.

    result = finalize(model, x[:1], lut, gates=gates, bits=bits, calibration=x)
    result.plan, result.bits, result.expected_cycles, result.table_cycles, result.measured_cycles

The gates become a pruning plan (`ChannelGates.plan`) and the bit probabilities per-layer widths
(`BitChoices.widths`); the hooks come off `model` first. A pruned copy of the model is made
(`codesign.prune_module`, the model itself keeps its shape), imported, given its widths as
`bits` attributes, calibrated and quantized, and its latency measured with the timing model
(`driver.latency`, the cycles the simulator runs). Reported beside it: the expected cycles of
the soft choices the training ended with, and the table's cycles for the hard choice.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.codesign.mirror import prune_module
from dopant.codesign.training.bits import BitChoices
from dopant.codesign.training.gates import ChannelGates
from dopant.codesign.training.lut import LatencyLUT
from dopant.compiler.driver import latency, quantize_network
from dopant.compiler.frontend import import_model
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.set_bits import set_layer_bits


@dataclass(frozen=True)
class Finalized:
    """The trained choices, applied: `model` is the pruned float copy (gates gone), `quantized`
    its integer IR at `bits`; cycles as the module doc says."""

    plan: PruningPlan | None
    kept: dict[str, int]  # group id -> channels kept (the groups the gates had)
    bits: dict[str, tuple[int, int]]  # layer path -> (w_bits, a_bits); {} without bit choices
    model: nn.Module
    quantized: ModuleOp
    expected_cycles: float  # the soft choices, as training ended
    table_cycles: float  # the LUT for the hard choice
    measured_cycles: int  # the timing model, on the quantized network

    @property
    def table_error(self) -> float:
        """(table - measured) / measured."""
        return (self.table_cycles - self.measured_cycles) / self.measured_cycles


def finalize(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    lut: LatencyLUT,
    *,
    calibration: Any,
    gates: ChannelGates | None = None,
    bits: BitChoices | None = None,
    quantize_method: str = "minmax",
) -> Finalized:
    """Make `gates` and `bits` hard, apply them to a copy of `model` and measure it on the
    LUT's target (module doc); `calibration` images calibrate the quantized copy. The hooks of
    `gates` and `bits` are removed from `model`. Fails as `prune_module`, `import_model` and
    `quantize_network` do."""
    with torch.no_grad():
        kept_soft = gates.expected_kept() if gates is not None else None
        probs = bits.probabilities() if bits is not None else None
        expected = float(lut.expected_cycles(kept=kept_soft, probs=probs))
    for choices in (gates, bits):
        if choices is not None:
            choices.remove()
    plan = gates.plan() if gates is not None else None
    kept = gates.kept_counts() if gates is not None else {}
    widths = bits.widths() if bits is not None else {}
    pruned = copy.deepcopy(model)
    if plan is not None:
        prune_module(pruned, plan)
    pruned.eval()
    module = import_model(pruned, example_inputs)
    set_layer_bits(module, [f"{path}=w{w}a{a}" for path, (w, a) in widths.items()])
    quantized = quantize_network(module, calibration, method=quantize_method)
    return Finalized(
        plan,
        kept,
        widths,
        pruned,
        quantized,
        expected,
        lut.cycles(kept, widths),
        latency(quantized, lut.config).total_cycles,
    )
