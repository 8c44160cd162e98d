"""Explicit references the saliency tests share: a tiny model with hand-built groups, data, and
gate-space derivatives computed by scaling the structures' parameters (no hooks, no gates) on
the concatenated data, whose mean loss is the dataset loss METHODS.md's g and H belong to."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

from dopant.passes._prune_channels.groups import Group, Member

SIZES = (3, 4)  # channels of the tiny model's two prunable groups

# Per prunable group, in order: the layers whose weight and bias θ_s scales, and the group's size.
Structures = Sequence[tuple[Sequence[str], int]]
Loss = Callable[[Tensor, Tensor], Tensor]


class Tiny(nn.Module):
    """conv(1→3) [+BN] + relu + conv(3→4) [+BN] + relu + global pool + linear(4→5)."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1, bias=not norm)
        self.bn1 = nn.BatchNorm2d(3) if norm else nn.Identity()
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1, bias=not norm)
        self.bn2 = nn.BatchNorm2d(4) if norm else nn.Identity()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def rows(n: int, k: int = 1) -> np.ndarray:
    return np.arange(n * k).reshape(n, k)


def group(id: str, size: int, members: list[Member], gates: list[Member]) -> Group:
    return Group(id, size, tuple(members), tuple(gates), True, "", 0, 0)


def randomize_norms(norms: Sequence[nn.Module]) -> None:
    """Random float64 scales, shifts and running statistics, so no channel is like another."""
    for bn in norms:
        assert isinstance(bn, nn.BatchNorm2d)
        n = bn.num_features
        bn.weight.data = torch.randn(n, dtype=torch.double)
        bn.bias.data = torch.randn(n, dtype=torch.double)
        bn.running_mean = torch.randn(n, dtype=torch.double) * 0.1
        bn.running_var = torch.rand(n, dtype=torch.double) + 0.5


def tiny(norm: bool) -> tuple[Tiny, list[Group]]:
    torch.manual_seed(0)
    model = Tiny(norm).double()
    if norm:
        randomize_norms([model.bn1, model.bn2])
    groups = []
    for i, (layer, norm_name, consumer, op) in enumerate(
        [("conv1", "bn1", "conv2", "conv2d"), ("conv2", "bn2", "fc", "linear")]
    ):
        n = SIZES[i]
        out = Member(layer, "conv2d", "out", rows(n))
        bn = Member(norm_name, "batch_norm", "channel", rows(n))
        members = [out, bn] if norm else [out]
        groups.append(
            group(layer, n, [*members, Member(consumer, op, "in", rows(n))], [members[-1]])
        )
    fc = Member("fc", "linear", "out", rows(5))
    groups.append(Group("fc", 5, (fc,), (fc,), False, "the network's output", 0, 0))
    return model, groups


def tiny_structures(norm: bool) -> Structures:
    """θ_s of the tiny model: the batch norm's (γ_s, β_s), or without one the conv's (W_s, b_s)."""
    layers = ("bn1", "bn2") if norm else ("conv1", "conv2")
    return [([layer], size) for layer, size in zip(layers, SIZES, strict=True)]


def data(sizes: tuple[int, ...] = (6, 4)) -> list[tuple[Tensor, Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(n, 1, 5, 5, dtype=torch.double), torch.randint(0, 5, (n,))) for n in sizes]


def concat(batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """All samples as one batch: in eval mode a sample's logits do not depend on its batch."""
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def scaled_logits(
    model: nn.Module, structures: Structures, x: Tensor
) -> Callable[[Tensor], Tensor]:
    """Logits as a function of c, scaling the weight and bias of every layer of structure s by
    c_s (a layer's output channel axis is 0): no hooks."""
    params = dict(model.named_parameters())
    sizes = [size for _, size in structures]
    model.eval()

    def logits(c: Tensor) -> Tensor:
        scaled = dict(params)
        for (layers, _), part in zip(structures, torch.split(c, sizes), strict=True):
            for key in [f"{layer}.{name}" for layer in layers for name in ("weight", "bias")]:
                if key in params:
                    p = params[key]
                    scaled[key] = p * part.reshape(-1, *[1] * (p.ndim - 1))
        return functional_call(model, scaled, (x,))

    return logits


def gate_terms(
    model: nn.Module,
    structures: Structures,
    batches: Sequence[tuple[Tensor, Tensor]],
    loss: Loss = F.cross_entropy,
) -> tuple[np.ndarray, np.ndarray]:
    """∂L/∂c and ∂²L/∂c² of the mean loss over all samples, from the parameter-scaling function
    on the concatenated batches."""
    x, y = concat(batches)
    f = scaled_logits(model, structures, x)

    def L(c: Tensor) -> Tensor:
        return loss(f(c), y)

    ones = torch.ones(sum(size for _, size in structures), dtype=torch.double)
    c = ones.clone().requires_grad_()
    g = torch.autograd.grad(L(c), c)[0]
    return g.detach().numpy(), hessian(L, ones).numpy()


def explicit_jacobians(model: nn.Module, structures: Structures, x: Tensor) -> Tensor:
    """J[n] = ∂ logits[n] / ∂c, [N, C, S], by scaling the parameters."""
    ones = torch.ones(sum(size for _, size in structures), dtype=torch.double)
    return jacobian(scaled_logits(model, structures, x), ones)


def softmax_hessians(z: Tensor) -> Tensor:
    """Λ_n = diag(p_n) − p_n p_nᵀ, the Hessian of one sample's cross-entropy w.r.t. its logits."""
    p = torch.softmax(z, dim=1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def references(
    model: nn.Module, structures: Structures, batches: Sequence[tuple[Tensor, Tensor]]
) -> dict[tuple[str, str], np.ndarray]:
    """Every data method's scores, keyed by (method, hessian), on the concatenated data: from
    the parameter-scaling derivatives and the Gauss-Newton matrix (1/N) Σ_n J_nᵀ Λ_n J_n."""
    g, h = gate_terms(model, structures, batches)
    x, _ = concat(batches)
    J = explicit_jacobians(model, structures, x)
    model.eval()
    lam = softmax_hessians(model(x).detach())
    gn = (torch.einsum("nci,ncd,ndj->ij", J, lam, J) / len(x)).numpy()
    ones = np.ones(len(g))
    return {
        ("taylor", "exact"): np.abs(g),
        ("sosp-h", "exact"): np.abs(g) + 0.5 * np.abs(h @ ones),
        ("sosp-h", "gauss-newton"): np.abs(g) + 0.5 * np.abs(gn @ ones),
        ("sosp-i", "exact"): np.abs(g) + 0.5 * np.abs(gn).sum(axis=1),
    }


def split(scores: np.ndarray) -> dict[str, np.ndarray]:
    return {"conv1": scores[: SIZES[0]], "conv2": scores[SIZES[0] :]}


def assert_scores(got: dict[str, np.ndarray], want: np.ndarray, rtol: float = 1e-6) -> None:
    assert set(got) == {"conv1", "conv2"}  # the unprunable group has no scores
    for key, value in split(want).items():
        assert got[key].dtype == np.float64
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=1e-12)
