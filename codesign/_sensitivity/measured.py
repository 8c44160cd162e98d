"""The sensitivity methods that measure instead of estimating: `output` (each layer's output
error) and `loss` (the network's loss increase), one layer and one tensor quantized at a time,
on the calibration batches (`codesign.sensitivity` module doc)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from dopant.codesign._sensitivity.quantizers import dequantized_activation, dequantized_weight
from dopant.codesign._sensitivity.run import Costs, Run, means

Loss = Callable[[Tensor, Tensor], Tensor]


def _weights(run: Run) -> dict[str, dict[int, Tensor]]:
    """Q_b(W) of every layer at every width, in the layer's dtype."""
    return {
        path: {
            b: torch.as_tensor(dequantized_weight(m.weight, b, run.per_channel)).to(m.weight)
            for b in run.widths
        }
        for path, m in run.taps.modules.items()
    }


def _input(run: Run, path: str, x: Tensor, bits: int) -> Tensor:
    """Q_b of layer `path`'s input `x`, in x's dtype."""
    return torch.as_tensor(dequantized_activation(x, *run.ranges[path], bits)).to(x)


def output_errors(run: Run) -> tuple[Costs, Costs]:
    """The mean squared error of each layer's output with its weights, then its input, at
    each width, over all samples."""
    layers, widths = run.taps.modules, run.widths
    weights = _weights(run)
    sums = {kind: {p: dict.fromkeys(widths, 0.0) for p in layers} for kind in ("w", "a")}

    def visit(path: str, x: Tensor) -> None:
        module = layers[path]
        exact = module(x)
        for b in widths:
            by_weight = functional_call(module, {"weight": weights[path][b]}, (x,), strict=False)
            by_input = module(_input(run, path, x, b))
            sums["w"][path][b] += len(x) * float(F.mse_loss(by_weight, exact))
            sums["a"][path][b] += len(x) * float(F.mse_loss(by_input, exact))

    for x, _ in run.batches():
        with torch.no_grad():
            run.taps.run(visit, partial(run.model, x))
    return means(sums["w"], run.samples), means(sums["a"], run.samples)


def loss_increase(run: Run, loss: Loss) -> tuple[Costs, Costs]:
    """How much the mean loss over all samples rises when only one layer's weights (first
    table), or only one layer's input (second), are at b bits and everything else is float;
    a fall (noise at wide widths) counts as 0."""
    layers, widths = run.taps.modules, run.widths
    weights = _weights(run)
    params = {name: p.detach() for name, p in run.model.named_parameters()}
    sums = {kind: {p: dict.fromkeys(widths, 0.0) for p in layers} for kind in ("w", "a")}

    def replace(only: str, bits: int) -> Callable[[str, Tensor], Tensor | None]:
        return lambda path, x: _input(run, path, x, bits) if path == only else None

    for x, y in run.batches():
        with torch.no_grad():
            base = float(loss(run.model(x), y))
            for path in layers:
                name = f"{path}.weight" if path else "weight"
                for b in widths:
                    by_weight = functional_call(run.model, {**params, name: weights[path][b]}, (x,))
                    by_input = run.taps.run(replace(path, b), partial(run.model, x))
                    sums["w"][path][b] += len(x) * (float(loss(by_weight, y)) - base)
                    sums["a"][path][b] += len(x) * (float(loss(by_input, y)) - base)
    return _floor(means(sums["w"], run.samples)), _floor(means(sums["a"], run.samples))


def _floor(costs: Costs) -> Costs:
    return {path: {b: max(v, 0.0) for b, v in row.items()} for path, row in costs.items()}
