"""Hessian traces per tensor from a loss's first derivatives (double backward): Hutchinson's
estimate E[vᵀHv] = Tr(H) over Rademacher v (Hutchinson 1990; HAWQ-V3, PyHessian), or exactly
by unit vectors for small tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dopant.support.errors import InputError

MAX_EXACT = 20_000  # probes=0: one Hessian-vector product per weight and input element
CHUNK = 256


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
