"""Channel saliency for structured pruning: how much the loss would change if a channel went.

`group_saliency(model, groups, batches, method)` scores every channel of every prunable
coupling group (`passes._prune_channels.groups`) in torch on real data. A structure s is one
group channel; its parameters θ_s are, in each producing layer, the batch norm's scale and
shift (γ_s, β_s) where a batch norm follows the layer, else the filter and bias (W_s, b_s).

The data methods never form θ_s: they put a gate c_s = 1 on the channel's output (after the
batch norm if any) and differentiate with respect to the gates. The gated output is linear in
the scaling of θ_s, so ∂L/∂c_s = θ_sᵀ g and ∂²L/∂c_s∂c_s' = θ_sᵀ H θ_s' exactly (METHODS.md,
SOSP section, "Gates make it simple"; Nonnenmacher et al., ICLR 2022). Methods:

- `magnitude`: Σ |p| over every parameter the channel's removal removes (needs no data);
- `taylor`: |θ_sᵀ g|, with g the gradient of the loss over the whole data (the mean over all
  N samples: each batch's mean-loss gradient weighted by its size n_b, Σ n_b g_b / N);
- `sosp-h`: |θ_sᵀ g| + ½ |θ_sᵀ H θ_struc|, θ_struc = all prunable structures: in gate space
  |∂L/∂c| + ½ |H_c 𝟙|, one Hessian-vector product per batch, g and H_c 𝟙 averaged over the
  samples like g (Σ n_b (H_c 𝟙)_b / N) before the absolute values. `hessian="exact"`
  differentiates twice (`torch.func`: `grad` of ⟨`grad`, 𝟙⟩); `"gauss-newton"` uses
  J_cᵀ Λ (J_c 𝟙), Λ the Hessian of the loss w.r.t. the logits (positive semi-definite; one
  JVP, then one VJP);
- `sosp-i`: |θ_sᵀ g| + ½ Σ_s' |Q_ss'|, Q = (1/N) Σ_n J_nᵀ Λ_n J_n over all N samples, J_n the
  per-sample Jacobian of the logits w.r.t. all S gates: S×S memory, small models only.

The model runs in eval mode (batch norms use their running statistics); its parameters are not
touched, and its hooks and train/eval modes are restored afterwards, even on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence, Sized

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dopant.codesign._saliency.gates import (
    GatedNetwork,
    fisher_sum,
    gradient,
    gradient_and_gauss_newton_ones,
    gradient_and_hessian_ones,
)
from dopant.codesign._saliency.magnitude import magnitude
from dopant.passes._prune_channels.groups import Group
from dopant.support.errors import InputError
from dopant.support.progress import progress as bar

METHODS = ("magnitude", "taylor", "sosp-h", "sosp-i")
HESSIANS = ("exact", "gauss-newton")
MAX_STRUCTURES = 4096  # sosp-i's S×S float64 matrix (and its per-batch term): 256 MiB at 4096


def sosp_i_mib(structures: int) -> float:
    """The memory sosp-i's matrices take: Q and one batch's term, S×S float64 each."""
    return 2 * structures**2 * 8 / 2**20


def group_saliency(
    model: nn.Module,
    groups: Sequence[Group],
    batches: Iterable[tuple[Tensor, Tensor]] | None,
    method: str = "sosp-h",
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    hessian: str = "exact",
    max_structures: int = MAX_STRUCTURES,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """One float64 score per channel of each prunable group, keyed by group id (module doc).

    `batches` yields (inputs, labels) pairs; inputs are cast to the model's float dtype.
    Batches may differ in size: every term is a mean over all samples. `loss(logits, labels)`
    must be the mean over the batch of per-sample losses (so a batch of one gives a sample's
    loss); the default is cross-entropy, whose labels are class indices 0 .. C-1 for C logits
    (or per-class probabilities shaped like the logits). `max_structures` bounds the total
    number S of prunable channels sosp-i accepts. `progress` draws a bar on a terminal.

    Raises InputError for an unknown method or Hessian, a member path the model lacks, a gate
    on a module that has no channels to gate, sosp-i over more than `max_structures` channels
    (naming S and the memory it would take), a data method given no batches (or None), an
    empty batch, and, with the default loss, a label outside 0 .. C-1.
    """
    if method not in METHODS:
        raise InputError(
            f"saliency method '{method}' is not known; use one of {', '.join(METHODS)}."
        )
    if hessian not in HESSIANS:
        raise InputError(f"hessian '{hessian}' is not known; use one of {', '.join(HESSIANS)}.")
    prunable = [group for group in groups if group.prunable]
    modules = group_modules(model, prunable)
    if method == "magnitude":
        return magnitude(prunable, modules)
    if batches is None:
        raise _no_data(method)
    structures = sum(group.size for group in prunable)
    if method == "sosp-i" and structures > max_structures:
        raise InputError(
            f"sosp-i needs an S×S matrix over all S = {structures} prunable channels, about "
            f"{sosp_i_mib(structures):.0f} MiB in float64 (the limit is {max_structures} "
            "channels, `max_structures`); use sosp-h, which needs one Hessian-vector product."
        )
    if structures == 0:
        return {}
    with GatedNetwork(model, prunable, modules) as net:
        g, curvature = _accumulate(net, batches, method, hessian, loss, progress)
    if method == "taylor":
        scores = np.abs(g)
    elif method == "sosp-h":
        scores = np.abs(g) + 0.5 * np.abs(curvature)
    else:
        scores = np.abs(g) + 0.5 * np.abs(curvature).sum(axis=1)
    ends = np.cumsum([group.size for group in prunable])
    return {
        group.id: part for group, part in zip(prunable, np.split(scores, ends[:-1]), strict=True)
    }


def group_modules(model: nn.Module, groups: Sequence[Group]) -> dict[str, nn.Module]:
    """The module of every member path, or an InputError naming the first the model lacks."""
    found = dict(model.named_modules())
    modules = {}
    for group in groups:
        for member in (*group.members, *group.gates):
            if member.path not in found:
                raise InputError(
                    f"group '{group.id}' names the module '{member.path}', which the model does "
                    "not have; the groups must come from this model's import."
                )
            modules[member.path] = found[member.path]
    return modules


def _accumulate(
    net: GatedNetwork,
    batches: Iterable[tuple[Tensor, Tensor]],
    method: str,
    hessian: str,
    loss: Callable[[Tensor, Tensor], Tensor] | None,
    show: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The gradient and the method's curvature term (H_c 𝟙 for sosp-h, Q for sosp-i, zeros
    for taylor) as means over all samples, in float64: each batch's terms of its mean loss
    weighted by its size n_b, then divided by N = Σ n_b (Q comes as a sum over samples)."""
    size = net.size
    g = np.zeros(size)
    curvature = np.zeros((size, size) if method == "sosp-i" else size)
    count = samples = classes = 0
    total = len(batches) if isinstance(batches, Sized) else None
    for batch in bar(batches, show=show, total=total, what=f"saliency ({method})", unit="batch"):
        x, y = _pair(batch, count, net)
        if loss is None:
            classes = classes or _classes(net, x)
            _check_labels(y, count, classes)
        g_batch, term = _terms(net, x, y, method, hessian, loss or F.cross_entropy)
        n = len(x)
        g += n * _numpy(g_batch)
        if term is not None:
            curvature += _numpy(term) if method == "sosp-i" else n * _numpy(term)
        count += 1
        samples += n
    if count == 0:
        raise _no_data(method)
    return g / samples, curvature / samples


def _terms(
    net: GatedNetwork,
    x: Tensor,
    y: Tensor,
    method: str,
    hessian: str,
    loss: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor | None]:
    """One batch's ∂L/∂c and curvature term (None for taylor) for its mean loss L."""
    if method == "taylor":
        return gradient(net, x, y, loss), None
    if method == "sosp-i":
        return gradient(net, x, y, loss), fisher_sum(net, x, y, loss)
    if hessian == "exact":
        return gradient_and_hessian_ones(net, x, y, loss)
    return gradient_and_gauss_newton_ones(net, x, y, loss)


def _no_data(method: str) -> InputError:
    return InputError(
        f"saliency needs data: method '{method}' got no batches; pass (inputs, labels) "
        "batches, or use method 'magnitude', which needs none."
    )


def _pair(batch: object, index: int, net: GatedNetwork) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) >= 2):
        raise InputError(f"saliency batch {index} is not an (inputs, labels) pair.")
    x, y = batch[0], batch[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise InputError(f"saliency batch {index} must hold torch tensors, got {type(x)}.")
    if x.ndim == 0 or len(x) == 0:
        raise InputError(
            f"saliency batch {index} holds no samples (inputs of shape {tuple(x.shape)}); "
            "leave empty batches out."
        )
    x = x.to(device=net.device, dtype=net.dtype) if x.is_floating_point() else x.to(net.device)
    return x, y.to(net.device)


def _classes(net: GatedNetwork, x: Tensor) -> int:
    """How many logits the model gives a sample (one forward pass on the batch's first)."""
    with torch.no_grad():
        logits = net.logits(net.ones(), x[:1])
    return int(logits.shape[1]) if logits.ndim > 1 else int(logits.shape[0])


def _check_labels(y: Tensor, index: int, classes: int) -> None:
    """Class-index labels for the default cross-entropy must lie in 0 .. classes - 1."""
    if y.is_floating_point():
        return  # per-class probabilities: cross-entropy checks their shape itself
    bad = y[(y < 0) | (y >= classes)]
    if bad.numel() == 0:
        return
    raise InputError(
        f"saliency batch {index} has the label {int(bad[0])}, but the model gives C = {classes} "
        f"logits and the default cross-entropy loss takes labels 0 .. {classes - 1}; shift the "
        "labels (e.g. 1..C to 0..C-1) or pass a `loss` that takes them."
    )


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()
