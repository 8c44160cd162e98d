"""Channel gates: the model as a function of one gate per prunable channel.

A gate c_s multiplies the output channels of channel s at every gate member of its group (the
batch norm after a producing layer, else the layer). At c = 1 the network is unchanged, and
since that output is linear in the structure's parameters θ_s (the batch norm's γ and β, or the
filter and bias), derivatives with respect to c are derivatives along θ_s:
∂L/∂c_s = θ_sᵀ g and ∂²L/∂c_s∂c_s' = θ_sᵀ H θ_s' (METHODS.md, "Gates make it simple").

The per-batch terms below return sums in the gate space of all prunable channels, the groups
side by side in the order given; the caller averages them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

from dopant.compiler.models.modes import eval_mode
from dopant.passes._prune_channels.groups import Group
from dopant.support.errors import InputError

Loss = Callable[[Tensor, Tensor], Tensor]


def _width(module: nn.Module, path: str) -> int:
    """The number of output channels of a gate module."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    raise InputError(
        f"the gate at '{path}' is a {type(module).__name__}; a channel gate sits on a Conv2d, "
        "Linear or BatchNorm module."
    )


def gate_lookups(
    groups: Sequence[Group], modules: dict[str, nn.Module]
) -> list[tuple[nn.Module, Tensor]]:
    """Per gate module of `groups`, the index of each of its output channels' gate in the
    groups' gates side by side (in the order given), or their total count for a channel no
    group gates (it is scaled by a constant 1)."""
    size = sum(group.size for group in groups)
    lookups: dict[str, Tensor] = {}
    offset = 0
    for group in groups:
        for gate in group.gates:
            if gate.path not in lookups:
                width = _width(modules[gate.path], gate.path)
                lookups[gate.path] = torch.full((width,), size, dtype=torch.long)
            rows = torch.arange(offset, offset + group.size).repeat_interleave(
                gate.channels.shape[1]
            )
            lookups[gate.path][torch.as_tensor(gate.channels.reshape(-1))] = rows
        offset += group.size
    return [(modules[path], lookup) for path, lookup in lookups.items()]


class GatedNetwork:
    """`model` in eval mode with forward hooks that scale each gate module's output channels by
    their gates; `logits(c, x)` runs it for a gate vector c (parameters detached, untouched).

    Use it as a context manager: entering puts the model in eval mode and adds the hooks,
    leaving removes them and restores every module's train/eval mode, even on error.
    """

    def __init__(self, model: nn.Module, groups: Sequence[Group], modules: dict[str, nn.Module]):
        self.model = model
        self.size = sum(group.size for group in groups)
        self._lookups = gate_lookups(groups, modules)
        floats = [p for p in model.parameters() if p.is_floating_point()]
        self.dtype = floats[0].dtype if floats else torch.get_default_dtype()
        self.device = floats[0].device if floats else torch.device("cpu")
        self._params = {name: p.detach() for name, p in model.named_parameters()}
        self._gates: Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._modes = ExitStack()  # eval mode while entered

    def __enter__(self) -> GatedNetwork:
        self._modes.enter_context(eval_mode(self.model))
        for module, lookup in self._lookups:
            self._handles.append(module.register_forward_hook(self._hook(lookup)))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._modes.close()
        self._gates = None

    def _hook(self, lookup: Tensor) -> Callable[[nn.Module, object, Tensor], Tensor | None]:
        lookup = lookup.to(self.device)

        def hook(module: nn.Module, inputs: object, output: Tensor) -> Tensor | None:
            if self._gates is None:
                return None
            scale = torch.cat([self._gates, self._gates.new_ones(1)])[lookup]
            return output * scale.reshape(1, -1, *([1] * (output.ndim - 2)))

        return hook

    def ones(self) -> Tensor:
        return torch.ones(self.size, dtype=self.dtype, device=self.device)

    def logits(self, gates: Tensor, x: Tensor) -> Tensor:
        self._gates = gates
        try:
            out = functional_call(self.model, self._params, (x,))
        finally:
            self._gates = None
        if not isinstance(out, Tensor):
            raise InputError(
                f"saliency needs a model that returns one tensor of logits, got {type(out)}."
            )
        return out


def gradient(net: GatedNetwork, x: Tensor, y: Tensor, loss: Loss) -> Tensor:
    """∂L/∂c at c = 1 for the batch's loss."""
    return grad(lambda c: loss(net.logits(c, x), y))(net.ones())


def gradient_and_hvp(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """∇f(x) and ∇²f(x) v by reverse-over-reverse (`grad` of ⟨grad, v⟩): forward-over-reverse
    (`jvp` of `grad`) fails inside torch for losses such as `mse_loss` (immutable ZeroTensors)."""

    def along(x: Tensor) -> tuple[Tensor, Tensor]:
        g = grad(f)(x)
        return (g * v).sum(), g

    hv, g = grad(along, has_aux=True)(x)
    return g, hv


def gradient_and_hessian_ones(
    net: GatedNetwork, x: Tensor, y: Tensor, loss: Loss
) -> tuple[Tensor, Tensor]:
    """∂L/∂c and H_c 𝟙 with the exact Hessian (double backward)."""
    c = net.ones()
    return gradient_and_hvp(lambda c: loss(net.logits(c, x), y), c, torch.ones_like(c))


def gradient_and_gauss_newton_ones(
    net: GatedNetwork, x: Tensor, y: Tensor, loss: Loss
) -> tuple[Tensor, Tensor]:
    """∂L/∂c and J_cᵀ Λ (J_c 𝟙), Λ = ∇²_z L the Hessian of the batch loss w.r.t. the logits z
    (for the mean cross-entropy, diag(p) − p pᵀ per sample over the batch size): one JVP,
    a Hessian-vector product of the loss in logit space, then one VJP (for both cotangents)."""
    c = net.ones()
    z, jv = jvp(lambda c: net.logits(c, x), (c,), (torch.ones_like(c),))[:2]
    dz, lam_jv = gradient_and_hvp(lambda z: loss(z, y), z.detach(), jv.detach())
    pull = vjp(lambda c: net.logits(c, x), c)[1]
    return pull(dz)[0], pull(lam_jv)[0]


def fisher_sum(net: GatedNetwork, x: Tensor, y: Tensor, loss: Loss) -> Tensor:
    """Σ_n J_nᵀ Λ_n J_n over the batch's samples in float64: J_n the C×S Jacobian of sample
    n's logits w.r.t. the gates (`jacrev`, `vmap` over samples), Λ_n the Hessian of its loss
    w.r.t. its logits (the loss of a batch of one)."""
    c = net.ones()
    jac = vmap(jacrev(lambda c, x1: net.logits(c, x1[None])[0]), in_dims=(None, 0))(c, x)
    with torch.no_grad():
        z = net.logits(c, x)
    lam = vmap(jacrev(jacrev(lambda z1, y1: loss(z1[None], y1[None]))))(z, y)
    jac, lam = jac.double(), lam.double()
    weighted = torch.einsum("ncd,nds->ncs", lam, jac)
    return torch.einsum("ncs,nct->st", jac, weighted)
