"""Hardware metrics in training: the accelerator's latency as a loss term and as a metric.

    lut = LatencyLUT.of(model, x[:1], "edge16", widths=(4, 8))
    gates, bits = ChannelGates(model, lut), BitChoices(model, lut)
    objective = LatencyLoss(lut, budget_cycles=0.5 * lut.dense_cycles, gates=gates, bits=bits)
    loss = objective(F.cross_entropy(model(x), y))    # + weight * relu(E[cycles] / budget - 1)
    result = finalize(model, x[:1], lut, gates=gates, bits=bits, calibration=x)

The accelerator as a metric, at the end of an epoch of a plain PyTorch loop:

    hardware = HardwareMetrics("edge16", x[:1], calibration=x[:64], csv="hardware.csv")
    hardware(model, epoch)     # cycles, FPS, utilization, energy, DRAM bytes of the model now

`LatencyLUT` holds the latency table as tensors and gives the expected cycles of soft choices
with gradients; `ChannelGates` and `BitChoices` are those soft choices on a torch model;
`LatencyLoss` and the loss functions turn the expected cycles into loss terms; `finalize` turns
the trained choices into a pruning plan and bit widths and measures the result on the simulator.
The names are imported on first use, so `import dopant.codesign.training` stays cheap.
"""

from __future__ import annotations

from dopant.support.lazy import lazy_exports

_EXPORTS = {
    "LatencyLUT": "dopant.codesign.training.lut",
    "ChannelGates": "dopant.codesign.training.gates",
    "BitChoices": "dopant.codesign.training.bits",
    "LatencyLoss": "dopant.codesign.training.losses",
    "budget_penalty": "dopant.codesign.training.losses",
    "fbnet_loss": "dopant.codesign.training.losses",
    "finalize": "dopant.codesign.training.finalize",
    "Finalized": "dopant.codesign.training.finalize",
    "HardwareMetrics": "dopant.codesign.training.metrics",
    "HardwareSample": "dopant.codesign.training.logs",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
