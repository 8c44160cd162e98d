"""One stage's network started where the last one ended, and the learned weights written back
into the float model (torch and IR) the next stage quantizes.

A `FakeQuantNetwork` holds its learned numbers in real units: each layer's latent weights and
bias (the weights round to w / s), its per-channel weight steps, and one step per activation.
A new stage quantizes the float model at its widths (which gives the IR, the structure, and a
first guess for every step), then takes over from the previous stage every number whose meaning
did not change:
- a layer's latent weights and bias, when its weight shape is unchanged (pruning changes it);
- its weight steps too, when in addition its weight width is unchanged;
- an activation step, when its tensor's storage range (width and signedness) is unchanged.
What changed width keeps the quantize pass's guess: the calibrated range for an activation, the
clipped weight range (`weight_clip`) for a layer. A stage of unchanged widths thus starts as
exactly the network the last stage ended with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.fakequant.nodes import FakeQuantLayer
from dopant.dialects.qnn import ConstantOp, Conv2DOp, LinearOp
from dopant.dialects.qnn.base import shape
from dopant.dialects.qnn.layers import dense
from dopant.support.errors import InputError


@dataclass(frozen=True)
class Carried:
    """What a stage took over from the previous one, out of how many it has."""

    layers: int
    weight_steps: int
    activation_steps: int
    total_layers: int
    total_steps: int

    def __str__(self) -> str:
        return (
            f"weights of {self.layers}/{self.total_layers} layers, {self.weight_steps} weight "
            f"and {self.activation_steps}/{self.total_steps} activation steps"
        )


def _layer(network: FakeQuantNetwork, key: str) -> FakeQuantLayer:
    layer = network.layers[key]
    assert isinstance(layer, FakeQuantLayer), "a FakeQuantNetwork's layers are FakeQuantLayers"
    return layer


@torch.no_grad()
def carry(previous: FakeQuantNetwork, network: FakeQuantNetwork) -> Carried:
    """Set `network`'s learned numbers to `previous`'s where their meaning is unchanged (module
    doc); layers are matched by op path, activation steps by key (made from op paths)."""
    keys = {path: key for key, path in previous.layer_paths().items()}
    layers = weight_steps = 0
    for key, path in network.layer_paths().items():
        if path not in keys:
            continue
        old, new = _layer(previous, keys[path]), _layer(network, key)
        if old.weight.shape != new.weight.shape or (old.bias is None) != (new.bias is None):
            continue
        new.weight.copy_(old.weight)
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
        layers += 1
        if old.levels == new.levels and old.weight_step.shape == new.weight_step.shape:
            new.weight_step.copy_(old.weight_step)
            new.get_buffer("step_floor").copy_(old.get_buffer("step_floor"))
            weight_steps += 1
    ranges = previous.step_qmax()
    steps = 0
    for key, qmax in network.step_qmax().items():
        if ranges.get(key) == qmax:
            network.steps[key].copy_(previous.steps[key])
            steps += 1
    return Carried(layers, weight_steps, steps, len(network.layers), len(network.steps))


@torch.no_grad()
def write_back(network: FakeQuantNetwork, model: nn.Module) -> None:
    """Each layer's latent weights and bias into the torch module of its op path (float32):
    the float model the next stage quantizes, prunes and calibrates. The model must be the
    batch-norm-folded one the network was quantized from."""
    for key, path in network.layer_paths().items():
        layer = _layer(network, key)
        module = model.get_submodule(path)
        if (
            not isinstance(module, nn.Conv2d | nn.Linear)
            or module.weight.shape != layer.weight.shape
        ):
            raise InputError(
                f'layer "{path}" of the quantized network has weights of shape '
                f"{list(layer.weight.shape)}, which the torch module at that path does not hold."
            )
        module.weight.copy_(layer.weight)
        if layer.bias is not None:
            if module.bias is None:
                module.bias = nn.Parameter(torch.zeros(module.weight.shape[0]))
            module.bias.copy_(layer.bias)


def with_weights(module: ModuleOp, model: nn.Module) -> ModuleOp:
    """A clone of float `module` whose conv and linear layers hold the weights and biases of
    `model`'s modules at their op paths: `model` imported again (`frontend.import_model` keeps
    torch's layouts and float32), without tracing it again. `module` must be `model`'s IR with
    its batch norms folded (no layer of it may have been changed since but its numbers)."""
    clone = module.clone()
    for op in clone.walk():
        if not isinstance(op, Conv2DOp | LinearOp):
            continue
        layer = model.get_submodule(op.path.data)
        for name, value in (("weight", op.weight), ("bias", op.bias)):
            tensor = getattr(layer, name, None)
            if value is None and tensor is None:
                continue
            if (
                value is None
                or not isinstance(value.owner, ConstantOp)
                or not isinstance(tensor, Tensor)
                or tuple(tensor.shape) != shape(value)
            ):
                raise InputError(
                    f"{op.where}: its {name} is not the {name} of the torch module at that path "
                    "(the IR and the model differ in structure)."
                )
            value.owner.properties["value"] = dense(tensor.detach().cpu().numpy())
    return clone
