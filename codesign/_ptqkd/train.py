"""One stage's distillation as a self-contained task, and the stitched network.

`train_stage(task)` rebuilds the fake-quant network from the quantized IR's text, feeds the
stage the float teacher's input feature quantized at the stage's frozen input step, and trains
the stage's own parameters (Adam, each at a rate relative to its scale: `parameter_groups`) to
reproduce the teacher's output feature (MSE on the dequantized output, float64), keeping the
best epoch. A task holds only text, numpy arrays and numbers, so it runs the
same in this process or in a Ray worker (`codesign.distributed`); it pins torch to one thread and
seeds itself, so the result is the same bit for bit wherever it ran.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dopant.codesign._ptqkd.stages import Stage
from dopant.codesign.threads import one_thread
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.fakequant import numerics as qn
from dopant.compiler.fakequant.nodes import Env, Value
from dopant.compiler.irio import parse_ir

LOSS_BATCH = 256  # images per batch when only measuring a loss


@dataclass(frozen=True)
class StageTask:
    """What one stage's training needs: the quantized IR as text, the stage, the teacher's
    input and output features of the stage on the training images, and the recipe."""

    ir: str
    stage: Stage
    inputs: np.ndarray
    targets: np.ndarray
    epochs: int
    lr: float
    batch_size: int
    seed: int


@dataclass(frozen=True)
class StageResult:
    """A trained stage: its MSE against the teacher (teacher's input, all training images)
    before training, after it (the best epoch's) and after each epoch, its trained parameters
    (the best epoch's) by name, and the task's wall time."""

    index: int
    loss_before: float
    loss_after: float
    epoch_losses: tuple[float, ...]
    parameters: dict[str, np.ndarray]
    seconds: float


def stage_input(network: FakeQuantNetwork, stage: Stage, x: Tensor) -> Tensor | dict[int, Value]:
    """What the stage's nodes read, from a teacher feature `x`: the image itself for the first
    stage, else `x` quantized at the stage's (frozen) input step."""
    if stage.input_id is None or stage.input_step is None:
        return x
    step = network.activation_steps()[stage.input_step].detach()
    u = qn.fake_quantize(x.to(torch.float64), step, *stage.input_range).detach()
    return {stage.input_id: Value(u, step)}


def stage_output(env: Env, stage: Stage) -> Tensor:
    """The stage's real-valued (dequantized) output, float64."""
    if stage.output_id is None:
        assert env.output is not None, "the last stage ends in the network's dequantize"
        return env.output.to(torch.float64)
    value = env.values[stage.output_id]
    return value.u * qn.along_channels(value.scale, value.u.ndim)


def _run(network: FakeQuantNetwork, stage: Stage, x: Tensor) -> Tensor:
    env = network.run_nodes(slice(stage.start, stage.stop), stage_input(network, stage, x))
    return stage_output(env, stage)


def _loss(network: FakeQuantNetwork, stage: Stage, x: np.ndarray, y: np.ndarray) -> float:
    """The stage's MSE over all of `x` (teacher's inputs) against `y`, without gradients."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(x), LOSS_BATCH):
            xb = torch.from_numpy(x[start : start + LOSS_BATCH])
            yb = torch.from_numpy(y[start : start + LOSS_BATCH]).to(torch.float64)
            total += F.mse_loss(_run(network, stage, xb), yb, reduction="sum").item()
    return total / y.size


def parameter_groups(
    network: FakeQuantNetwork, names: Sequence[str], lr: float
) -> list[dict[str, Any]]:
    """Adam's parameter groups for the parameters `names`, each at `lr` times its own scale.

    Why: Adam moves every parameter by about its learning rate per update, whatever its
    gradient's size, so one absolute rate is far too large for a 4-bit weight step of 0.01
    and too small for an activation step of 1 (LSQ's gradient scaling, made for SGD, has no
    effect under Adam). Scaled, an update moves each parameter by about `lr` of the grid it is
    measured on: a weight by `lr` of its layer's weight step, a weight step or an activation
    step by `lr` of itself, a bias by `lr` of its layer's mean bias magnitude (at least the
    weight step). On ResNet-8 at W4A4 this lowered every stage's loss where one absolute rate
    (1e-5 to 1e-3) left it flat or raised it.
    """
    groups = []
    for name in names:
        parameter = network.get_parameter(name)
        kind, key, *rest = name.split(".")
        if kind == "steps":
            scale = float(parameter.detach().abs().mean())
        else:
            step = network.get_parameter(f"layers.{key}.weight_step")
            weight_step = float(step.detach().abs().mean())
            scale = weight_step
            if rest == ["bias"]:
                scale = max(float(parameter.detach().abs().mean()), weight_step)
        groups.append({"params": [parameter], "lr": lr * scale})
    return groups


def train_stage(task: StageTask) -> StageResult:
    """Train one stage (module docstring); deterministic for a given task. After each epoch
    the stage's loss over all its images is measured, and the parameters of the best epoch are
    kept (the calibrated ones if no epoch beat them), so a stage never leaves worse than plain
    PTQ on its training data."""
    start_time = time.perf_counter()
    stage = task.stage
    with one_thread():
        torch.manual_seed(task.seed)
        network = FakeQuantNetwork(parse_ir(task.ir))
        owned = set(stage.parameters)
        for name, parameter in network.named_parameters():
            parameter.requires_grad_(name in owned)
        params = [network.get_parameter(name) for name in stage.parameters]
        x = np.ascontiguousarray(task.inputs, np.float32)
        y = np.ascontiguousarray(task.targets, np.float32)

        def snapshot() -> dict[str, np.ndarray]:
            return {
                n: p.detach().numpy().copy() for n, p in zip(stage.parameters, params, strict=True)
            }

        best, kept = _loss(network, stage, x, y), snapshot()
        before, epoch_losses = best, []
        if params and task.epochs:
            optimizer = torch.optim.Adam(parameter_groups(network, stage.parameters, task.lr))
            order = torch.Generator().manual_seed(task.seed + stage.index)
            images, targets = torch.from_numpy(x), torch.from_numpy(y).to(torch.float64)
            for _ in range(task.epochs):
                for batch in torch.randperm(len(x), generator=order).split(task.batch_size):
                    loss = F.mse_loss(_run(network, stage, images[batch]), targets[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                epoch_losses.append(_loss(network, stage, x, y))
                if epoch_losses[-1] < best:
                    best, kept = epoch_losses[-1], snapshot()
    return StageResult(
        stage.index,
        before,
        best,
        tuple(epoch_losses),
        kept,
        time.perf_counter() - start_time,
    )


def stitch(ir: str, results: Sequence[StageResult]) -> FakeQuantNetwork:
    """The network of `ir` with every stage's trained parameters loaded."""
    network = FakeQuantNetwork(parse_ir(ir))
    with torch.no_grad():
        for result in results:
            for name, value in result.parameters.items():
                # torch.tensor copies: arrays that come back from Ray are read-only.
                network.get_parameter(name).copy_(torch.tensor(value))
    return network


def stitched_errors(
    network: FakeQuantNetwork,
    stages: Sequence[Stage],
    images: np.ndarray,
    targets: Sequence[np.ndarray],
) -> list[float]:
    """Each stage's MSE against the teacher's output `targets[i]` when the stages run one after
    the other from `images`, each on what the one before it computed (not on the teacher's)."""
    totals = [0.0] * len(stages)
    with torch.no_grad():
        for start in range(0, len(images), LOSS_BATCH):
            inputs: Tensor | Mapping[int, Value] = torch.from_numpy(
                np.ascontiguousarray(images[start : start + LOSS_BATCH], np.float32)
            )
            for stage in stages:
                env = network.run_nodes(slice(stage.start, stage.stop), inputs)
                out = stage_output(env, stage)
                target = torch.from_numpy(targets[stage.index][start : start + LOSS_BATCH])
                totals[stage.index] += F.mse_loss(out, target.double(), reduction="sum").item()
                if stage.output_id is not None:
                    inputs = {stage.output_id: env.values[stage.output_id]}
    return [total / target.size for total, target in zip(totals, targets, strict=True)]
