"""Traces of the diagonal Hessian blocks of a batch's loss, one per tensor (a layer's weights,
a layer's input), by Hutchinson's estimate E[vᵀAv] = Tr(A) over Rademacher v (Hutchinson
1990; HAWQ-V3, PyHessian), or exactly by unit vectors for small tensors:

- `hutchinson` / `exact`: the Hessian itself, by Hessian-vector products (double backward);
- `gauss_newton`: the Gauss-Newton matrix JᵀΛJ, by one backward pass per probe in logit space.

Where the network is piecewise linear in each single tensor (conv, linear, batch norm in eval
mode, ReLU and clamps, pooling, adds: every network dopant compiles), the loss's second
derivative through the network vanishes within each diagonal block, so the two have the same
diagonal blocks (almost everywhere) and the same traces; the off-diagonal blocks differ, and
there the Hessian's first-order terms are what make `hutchinson` noisy."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from dopant.support.errors import InputError

MAX_EXACT = 20_000  # probes=0: one Hessian-vector product per weight and input element
CHUNK = 256  # unit vectors batched into one backward pass (exact traces, small tensors)
PROBE_CHUNK = 4  # Rademacher vectors batched: more saves no time on a CPU and costs memory


def _hvp(
    grads: Sequence[Tensor | None], inputs: Sequence[Tensor], vectors: Sequence[Tensor]
) -> list[Tensor]:
    """H v restricted to `inputs`: the gradient of Σ_j ⟨grads_j, v_j⟩ (double backward); a
    gradient that does not depend on the inputs (None, or no graph) contributes 0."""
    pairs = [
        (g, v) for g, v in zip(grads, vectors, strict=True) if g is not None and g.requires_grad
    ]
    if not pairs:
        return [torch.zeros_like(t) for t in inputs]
    out = torch.autograd.grad(
        [g for g, _ in pairs],
        list(inputs),
        grad_outputs=[v for _, v in pairs],
        retain_graph=True,
        allow_unused=True,
    )
    return [torch.zeros_like(t) if h is None else h for h, t in zip(out, inputs, strict=True)]


def hutchinson(
    grads: Sequence[Tensor | None],
    leaves: Sequence[Tensor],
    probes: int,
    generator: torch.Generator,
    groups: Sequence[Sequence[int]],
) -> list[float]:
    """Per leaf, the mean of vᵀ(Hv)|_leaf over `probes` Rademacher vectors v per group: each
    group of leaves (indices into `leaves`, covering them all once) is probed by its own v,
    zero on the other leaves, so one Hessian-vector product per group and probe. Unbiased for
    every leaf (the cross blocks cancel in expectation); the cross blocks between leaves of
    one group add variance, those between groups do not (so probe apart the leaves whose
    mixed derivatives are large, such as a layer's weights and its input)."""
    sums = [0.0] * len(leaves)
    for _ in range(probes):
        for group in groups:
            vectors = [
                (torch.randint(0, 2, leaves[i].shape, generator=generator) * 2 - 1).to(leaves[i])
                for i in group
            ]
            products = _hvp([grads[i] for i in group], [leaves[i] for i in group], vectors)
            for i, v, hv in zip(group, vectors, products, strict=True):
                sums[i] += float((v * hv).sum())
    return [s / probes for s in sums]


def exact(grads: Sequence[Tensor | None], leaves: Sequence[Tensor]) -> list[float]:
    """Per leaf, Σ_i e_iᵀ H e_i: one Hessian-vector product per element, CHUNK of them
    batched into one backward pass (`is_grads_batched`)."""
    elements = sum(leaf.numel() for leaf in leaves)
    if elements > MAX_EXACT:
        raise InputError(
            f"probes=0 computes exact traces with one Hessian-vector product per element, and "
            f"these layers' weights and inputs hold {elements} (the limit is {MAX_EXACT}); "
            "use probes > 0 (Hutchinson's estimate)."
        )
    traces = []
    for g, leaf in zip(grads, leaves, strict=True):
        if g is None or not g.requires_grad:
            traces.append(0.0)
            continue
        total = 0.0
        for start in range(0, leaf.numel(), CHUNK):  # rows e_i of the identity, batched
            rows = torch.arange(start, min(start + CHUNK, leaf.numel()))
            units = torch.zeros(len(rows), leaf.numel(), dtype=leaf.dtype, device=leaf.device)
            units[torch.arange(len(rows)), rows] = 1.0
            (products,) = torch.autograd.grad(
                g,
                leaf,
                grad_outputs=units.view(len(rows), *leaf.shape),
                retain_graph=True,
                is_grads_batched=True,
            )
            total += float(products.reshape(len(rows), -1)[torch.arange(len(rows)), rows].sum())
        traces.append(total)
    return traces


def loss_factors(loss: Callable[[Tensor, Tensor], Tensor], z: Tensor, y: Tensor) -> Tensor:
    """B_n with B_n B_nᵀ = Λ_n / N for each sample n of a batch of N: Λ_n the Hessian of
    sample n's loss w.r.t. its logits z_n (`loss` of a batch of one; for cross-entropy
    diag(p) − p pᵀ), factored by `eigh` with negative eigenvalues set to 0. Shape (N, C, C)."""
    lam = vmap(jacrev(jacrev(lambda z1, y1: loss(z1[None], y1[None]))))(z.detach(), y)
    values, vectors = torch.linalg.eigh(lam)
    return vectors * values.clamp(min=0).sqrt()[:, None, :] / math.sqrt(len(z))


def gauss_newton(
    z: Tensor,
    factors: Tensor,
    leaves: Sequence[Tensor],
    probes: int,
    generator: torch.Generator,
) -> list[float]:
    """Per leaf θ, Tr(J_θᵀ Λ J_θ), the Gauss-Newton block of the batch's mean loss (J_θ the
    Jacobian of the logits z, Λ = blockdiag(Λ_n) / N = blockdiag(B_n B_nᵀ)), by Hutchinson in
    logit space: for Rademacher u, E‖J_θᵀ B u‖² = Tr(J_θᵀ B Bᵀ J_θ). One backward pass per probe
    serves every leaf, and each leaf's estimate sees only its own block (no cross terms), is
    never negative, and is exact for `probes=0` (u over the N·C unit vectors, batched)."""
    if probes == 0 and z.numel() > MAX_EXACT:
        raise InputError(
            f"probes=0 computes exact Gauss-Newton traces with one backward pass per logit, "
            f"and the batch has {z.numel()} (the limit is {MAX_EXACT}); use probes > 0 "
            "(Hutchinson's estimate) or smaller batches."
        )
    if probes:
        units = (torch.randint(0, 2, (probes, *z.shape), generator=generator) * 2 - 1).to(z)
    else:
        units = torch.eye(z.numel(), dtype=z.dtype, device=z.device).view(-1, *z.shape)
    sums = [0.0] * len(leaves)
    chunk = CHUNK if probes == 0 else PROBE_CHUNK
    for start in range(0, len(units), chunk):
        cotangents = torch.einsum("ncd,knd->knc", factors, units[start : start + chunk])
        pulled = torch.autograd.grad(
            z,
            list(leaves),
            grad_outputs=cotangents,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        for i, r in enumerate(pulled):
            sums[i] += 0.0 if r is None else float((r**2).sum())
    return [s / (probes or 1) for s in sums]
