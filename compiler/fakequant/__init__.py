"""Quantization-aware training on the integer network: a fake-quant torch model of quantized IR.

    q = quantize_network(float_module, images, weight_bits=4)
    net = FakeQuantNetwork(q)                  # agrees with reference.run(q, x), bit for bit
    finetune(net, images, labels, epochs=3)    # LSQ: weights, biases and steps are learned
    q2 = net.export()                          # integer IR again; reference.run(q2) == net
    env = net.run_nodes(slice(a, b), inputs)   # a span of the nodes (stage-wise training)

`FakeQuantNetwork` simulates the integer network op by op in float64 tensors of integer units
(fakequant.numerics): the integer rescalings (requantize, add, average pooling) take their forward
values from `runtime.intops`, the reference's own arithmetic, and every rounding passes the
gradient straight through, so the forward pass equals the reference's while training follows
LSQ (Esser et al., ICLR 2020): latent float
weights quantized per output channel with learned steps, int32 biases at S_x * S_w, and one
learned step per activation tensor, each step's gradient scaled by 1 / sqrt(N Q_P).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.fakequant import numerics as qn
from dopant.compiler.fakequant.build import Program, build
from dopant.compiler.fakequant.export import export_ir
from dopant.compiler.fakequant.nodes import Env, Value
from dopant.support.errors import InputError


class FakeQuantNetwork(nn.Module):
    """The integer network of a quantized module as a trainable torch model.

    Expects the output of the quantize pass: `@forward` taking one f32 tensor, quantize, integer
    conv2d/linear with constant weights and si32 biases, requantize, add, max/avg/global pools,
    reshape, relu, concat, dequantize, all with zero points 0.
    Guarantees: `forward(x)` returns what `reference.run` returns on the module (same f32
    values; the input may have any batch size, the IR's batch is only the traced one), with
    LSQ gradients for `layers[...].weight`, `.weight_step`, `.bias` and `steps[...]` (keys are
    the op paths with `_` for other characters: `conv1`, `conv1_requantize`, `layer1_0_add`).
    The parameters are float64; the forward pass runs the integer kernels on the CPU.
    Fails: InputError naming the op and its path for float IR, an op it does not simulate or
    IR that breaks the quantize pass's conventions (see `fakequant.build.build`), and for an input
    whose per-sample shape differs from the IR's; ExecutionError, as the reference, when an
    accumulator leaves si32.
    """

    def __init__(self, module: ModuleOp) -> None:
        super().__init__()
        self._source = module.clone()
        self._program = build(self._source)
        self.layers = nn.ModuleDict(self._program.layers)
        self.steps = nn.ParameterDict(
            {
                key: nn.Parameter(torch.tensor(step.init, dtype=torch.float64))
                for key, step in self._program.steps.items()
            }
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input shape of the IR; any batch size (axis 0) is accepted."""
        return self._program.input_shape

    def layer_paths(self) -> dict[str, str]:
        """The op path (the torch module path) of each conv/linear layer, by its key in
        `layers`."""
        return {key: op.path.data for op, key in self._program.layer_of.items()}

    def step_qmax(self) -> dict[str, int]:
        """Q_P, the largest integer of its storage type, of each learned activation step, by
        its key in `steps`: two steps of one key and Q_P quantize to the same grid."""
        return {key: step.qmax for key, step in self._program.steps.items()}

    def activation_steps(self) -> dict[str, Tensor]:
        """The step every activation key uses in the forward pass: positive, with LSQ's gradient
        scale; steps tied by a concat share one tensor."""
        effective = {
            key: qn.lsq_step(
                self.steps[key],
                qn.lsq_grad_scale(step.numel, step.qmax),
                step.init * qn.MIN_STEP_FRACTION,
            )
            for key, step in self._program.steps.items()
        }
        return {key: effective[root] for key, root in self._program.alias.items()}

    def forward(self, x: Tensor) -> Tensor:
        """The f32 output of the integer network on a batch `x` of the IR's input shape."""
        expected = self.input_shape
        if x.ndim != len(expected) or tuple(x.shape[1:]) != tuple(expected[1:]):
            shown = ", ".join(map(str, expected[1:]))
            raise InputError(
                f"the network takes inputs of shape [N, {shown}], got {list(x.shape)}."
            )
        output = self.run_nodes(slice(None), x).output
        assert output is not None, "build() checks that @forward ends in a dequantize"
        return output

    @property
    def program(self) -> Program:
        """What the network runs: `nodes` in IR order, `ops[i]` the op node i runs, `ids` the
        id of each value a node writes, and the keys of its steps and layers."""
        return self._program

    def run_nodes(self, nodes: slice, inputs: Tensor | Mapping[int, Value]) -> Env:
        """Run `program.nodes[nodes]` and return what they computed (`Env.values` by id, and
        `Env.output` when the span ends the network): on the float input batch `inputs` when
        the span starts at the network's input, else on the integer values it reads, by id
        (`Value`s in integer units with their steps, as an earlier span computed them)."""
        steps, layers = self.activation_steps(), self._program.layers
        if isinstance(inputs, Tensor):
            env = Env(inputs, steps, layers)
        else:
            env = Env(torch.empty(0), steps, layers, dict(inputs))
        for node in self._program.nodes[nodes]:
            node.run(env)
        return env

    def export(self) -> ModuleOp:
        """The source IR with the learned integers and scales (see `fakequant.export.export_ir`);
        it verifies, keeps op paths, and `reference.run` on it returns what `forward` does."""
        with torch.no_grad():
            steps = self.activation_steps()
        return export_ir(self._source, self._program, steps, self._program.layers)


def _check_data(network: FakeQuantNetwork, x: np.ndarray, y: np.ndarray) -> None:
    sample = network.input_shape[1:]
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf" or x.shape[1:] != sample:
        raise InputError(
            f"training images must be a real array of shape [N, {', '.join(map(str, sample))}]"
            f", got {getattr(x, 'shape', type(x).__name__)}."
        )
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise InputError(
            f"training labels must be {len(x)} integers (one per image), got "
            f"{getattr(y, 'shape', type(y).__name__)}."
        )
    if len(x) == 0:
        raise InputError("there are no training samples.")


def finetune(
    network: FakeQuantNetwork,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-4,
    seed: int = 0,
) -> list[float]:
    """Train `network` in place on images `x` [N, ...] with integer labels `y` [N]: Adam on
    all parameters, cross entropy on the logits, `epochs` passes over shuffled batches (the
    order fixed by `seed`). Returns the mean training loss of each epoch.

    Raises InputError for data that does not fit the network or for a non-positive batch size.
    """
    _check_data(network, x, y)
    if batch_size < 1:
        raise InputError(f"the batch size must be positive, got {batch_size}.")
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(x), generator=order).split(batch_size):
            loss = F.cross_entropy(network(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(x))
    return losses
