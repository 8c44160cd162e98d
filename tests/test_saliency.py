"""Channel saliency against explicit references: gate-space derivatives computed by scaling the
structures' parameters (no hooks), full parameter-space Hessians, finite differences of the
loss, and magnitudes summed over the parameters autograd says a channel touches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

from dopant.codesign._saliency.gates import GatedNetwork, fisher_sum
from dopant.codesign.scores import group_saliency
from dopant.passes._prune_channels.groups import Group, Member
from dopant.support.errors import InputError

SIZES = (3, 4)  # channels of the tiny model's two prunable groups


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


def tiny(norm: bool) -> tuple[Tiny, list[Group]]:
    torch.manual_seed(0)
    model = Tiny(norm).double()
    if norm:
        for bn in (model.bn1, model.bn2):
            n = bn.num_features
            bn.weight.data = torch.randn(n, dtype=torch.double)
            bn.bias.data = torch.randn(n, dtype=torch.double)
            bn.running_mean = torch.randn(n, dtype=torch.double) * 0.1
            bn.running_var = torch.rand(n, dtype=torch.double) + 0.5
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


def data(sizes: tuple[int, ...] = (6, 4)) -> list[tuple[Tensor, Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(n, 1, 5, 5, dtype=torch.double), torch.randint(0, 5, (n,))) for n in sizes]


def structure_params(norm: bool) -> list[tuple[str, int]]:
    """Per group: the parameters θ_s scales (name, output channel axis is 0)."""
    return [("bn1", 0), ("bn2", 0)] if norm else [("conv1", 0), ("conv2", 0)]


def scaled_logits(model: Tiny, norm: bool, x: Tensor):
    """Logits as a function of c, scaling θ_s = (γ_s, β_s) or (W_s, b_s) by c_s: no hooks."""
    params = dict(model.named_parameters())
    model.eval()

    def logits(c: Tensor) -> Tensor:
        scaled = dict(params)
        for (layer, _), part in zip(structure_params(norm), torch.split(c, SIZES), strict=True):
            for name in ("weight", "bias"):
                p = params[f"{layer}.{name}"]
                scaled[f"{layer}.{name}"] = p * part.reshape(-1, *[1] * (p.ndim - 1))
        return functional_call(model, scaled, (x,))

    return logits


def gate_terms(model: Tiny, norm: bool, batches, loss=F.cross_entropy):
    """The batch-averaged ∂L/∂c and ∂²L/∂c² from the parameter-scaling function."""
    ones = torch.ones(sum(SIZES), dtype=torch.double)
    gs, hs = [], []
    for x, y in batches:
        f = scaled_logits(model, norm, x)

        def L(c: Tensor, f=f, y=y) -> Tensor:
            return loss(f(c), y)

        gs.append(torch.autograd.grad(L(ones.requires_grad_()), ones)[0].detach())
        hs.append(hessian(L, ones.detach()))
    return torch.stack(gs).mean(0).numpy(), torch.stack(hs).mean(0).numpy()


def split(scores: np.ndarray) -> dict[str, np.ndarray]:
    return {"conv1": scores[: SIZES[0]], "conv2": scores[SIZES[0] :]}


def assert_scores(got: dict[str, np.ndarray], want: np.ndarray, rtol: float = 1e-6) -> None:
    assert set(got) == {"conv1", "conv2"}  # the unprunable group has no scores
    for key, value in split(want).items():
        assert got[key].dtype == np.float64
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("norm", [True, False])
def test_sosp_h_is_the_gradient_plus_half_the_hessian_times_ones(norm: bool) -> None:
    model, groups = tiny(norm)
    batches = data()
    g, h = gate_terms(model, norm, batches)
    want = np.abs(g) + 0.5 * np.abs(h @ np.ones(len(g)))
    assert_scores(group_saliency(model, groups, batches, "sosp-h"), want)


@pytest.mark.parametrize("norm", [True, False])
def test_the_gate_hessian_is_the_parameter_hessian_along_the_structures(norm: bool) -> None:
    """θ_sᵀ g = ∂L/∂c_s and θ_sᵀ H θ_struc = (H_c 𝟙)_s, H over all parameters, flattened."""
    model, _ = tiny(norm)
    model.eval()
    x, y = data((6,))[0]
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def L(flat: Tensor) -> Tensor:
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    t = theta.clone().requires_grad_()
    grad = torch.autograd.grad(L(t), t)[0]
    H = hessian(L, theta, vectorize=True)
    structures = []  # θ_s: θ with every entry outside structure s zeroed
    for layer, _ in structure_params(norm):
        channels = dict(model.named_parameters())[f"{layer}.weight"].shape[0]
        for s in range(channels):
            mask = []
            for name, shape in zip(names, shapes, strict=True):
                m = torch.zeros(shape, dtype=torch.double)
                if name in (f"{layer}.weight", f"{layer}.bias"):
                    m[s] = 1.0
                mask.append(m.reshape(-1))
            structures.append(theta * torch.cat(mask))
    S = torch.stack(structures)  # [structures, parameters]
    g_c, h_c = gate_terms(model, norm, [(x, y)])
    np.testing.assert_allclose((S @ grad).numpy(), g_c, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(
        (S @ H @ S.sum(0)).numpy(), h_c @ np.ones(len(g_c)), rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose((S @ H @ S.T).numpy(), h_c, rtol=1e-6, atol=1e-12)


def explicit_jacobians(model: Tiny, norm: bool, x: Tensor) -> Tensor:
    """J[n] = ∂ logits[n] / ∂c, [N, C, S], by scaling the parameters."""
    return jacobian(scaled_logits(model, norm, x), torch.ones(sum(SIZES), dtype=torch.double))


def softmax_hessians(z: Tensor) -> Tensor:
    """Λ_n = diag(p_n) − p_n p_nᵀ, the Hessian of one sample's cross-entropy w.r.t. its logits."""
    p = torch.softmax(z, dim=1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def test_gauss_newton_is_j_transpose_lambda_j_times_ones() -> None:
    model, groups = tiny(True)
    batches = data()
    g, h = gate_terms(model, True, batches)
    products = []
    for x, _ in batches:
        J = explicit_jacobians(model, True, x)
        lam = softmax_hessians(model(x).detach()) / len(x)  # the mean loss over the batch
        products.append(
            torch.einsum("nci,ncd,ndj,j->i", J, lam, J, torch.ones(J.shape[2], dtype=torch.double))
        )
    gn = torch.stack(products).mean(0).numpy()
    assert not np.allclose(gn, h @ np.ones(len(g)), rtol=1e-3)  # the approximation is one
    want = np.abs(g) + 0.5 * np.abs(gn)
    assert_scores(group_saliency(model, groups, batches, hessian="gauss-newton"), want)


def test_gauss_newton_with_a_given_loss_uses_its_hessian_in_logit_space() -> None:
    model, groups = tiny(False)
    torch.manual_seed(2)
    batches = [(x, torch.randn(len(x), 5, dtype=torch.double)) for x, _ in data()]
    g, _ = gate_terms(model, False, batches, loss=F.mse_loss)
    products = []
    for x, _ in batches:
        J = explicit_jacobians(model, False, x)
        lam = 2.0 / J.shape[0] / J.shape[1]  # mse_loss averages over N*C entries: Λ = 2/(NC) I
        products.append(
            lam * torch.einsum("nci,ncj,j->i", J, J, torch.ones(J.shape[2], dtype=torch.double))
        )
    want = np.abs(g) + 0.5 * np.abs(torch.stack(products).mean(0).numpy())
    got = group_saliency(model, groups, batches, "sosp-h", F.mse_loss, hessian="gauss-newton")
    assert_scores(got, want)


def test_sosp_i_sums_the_per_sample_gauss_newton_matrix() -> None:
    model, groups = tiny(True)
    batches = data((6, 3))  # unequal batches: Q averages over samples
    g, _ = gate_terms(model, True, batches)
    Js = [explicit_jacobians(model, True, x) for x, _ in batches]
    lams = [softmax_hessians(model(x).detach()) for x, _ in batches]
    Q = sum(torch.einsum("nci,ncd,ndj->ij", J, lam, J) for J, lam in zip(Js, lams, strict=True)) / 9
    # its batch term against the explicit J_nᵀ Λ_n J_n, signs and all
    prunable = [gr for gr in groups if gr.prunable]
    modules = dict(model.named_modules())
    with GatedNetwork(model, prunable, modules) as net:
        term = fisher_sum(net, *batches[0], F.cross_entropy)
    np.testing.assert_allclose(
        term.numpy(),
        torch.einsum("nci,ncd,ndj->ij", Js[0], lams[0], Js[0]).numpy(),
        rtol=1e-6,
        atol=1e-12,
    )
    want = np.abs(g) + 0.5 * np.abs(Q.numpy()).sum(axis=1)
    assert_scores(group_saliency(model, groups, batches, "sosp-i"), want)


@pytest.mark.parametrize("norm", [True, False])
def test_taylor_is_a_finite_difference_of_the_loss(norm: bool) -> None:
    model, groups = tiny(norm)
    batches = data()
    eps = 1e-5

    def mean_loss(c: Tensor) -> float:
        with torch.no_grad():
            losses = [
                float(F.cross_entropy(scaled_logits(model, norm, x)(c), y)) for x, y in batches
            ]
        return float(np.mean(losses))

    ones = torch.ones(sum(SIZES), dtype=torch.double)
    step = torch.eye(len(ones), dtype=torch.double) * eps
    slope = [(mean_loss(ones + e) - mean_loss(ones - e)) / (2 * eps) for e in step]
    assert_scores(group_saliency(model, groups, batches, "taylor"), np.abs(slope), rtol=1e-6)


class Branchy(nn.Module):
    """conv(1→4)+BN, depthwise conv (multiplier 2), grouped conv(8→6, groups 2), flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(F.relu(self.dw(x))))
        return self.fc(x.flatten(1))


def touched(module: nn.Module, member: Member, i: int) -> dict[str, Tensor]:
    """The parameters of `module` that channel i of `member` carries, found by autograd: those
    with a gradient when only that channel's outputs are read ("out", "channel"), or when only
    that channel's inputs are nonzero ("in"; the bias reads no input)."""
    torch.manual_seed(3)
    module.eval()
    channels = torch.as_tensor(member.channels[i])
    width = (
        module.in_features
        if isinstance(module, nn.Linear)
        else getattr(module, "in_channels", None)
    )
    if member.dim == "in":
        x = torch.zeros(2, width, 2, 2) if isinstance(module, nn.Conv2d) else torch.zeros(2, width)
        x[:, channels] = torch.randn_like(x[:, channels])
        out = module(x)
        read = (out * torch.randn_like(out)).sum()
    else:
        shape = (
            (2, module.num_features, 2, 2)
            if isinstance(module, nn.BatchNorm2d)
            else (2, width, 2, 2)
        )
        x = torch.randn(shape) if not isinstance(module, nn.Linear) else torch.randn(2, width)
        out = module(x)[:, channels]
        read = (out * torch.randn_like(out)).sum()
    names = [n for n, _ in module.named_parameters() if not (member.dim == "in" and n == "bias")]
    grads = torch.autograd.grad(read, [getattr(module, n) for n in names])
    return {n: g != 0 for n, g in zip(names, grads, strict=True)}


def test_magnitude_sums_each_parameter_a_channel_removes_once() -> None:
    torch.manual_seed(4)
    model = Branchy()
    model.bn1.weight.data.uniform_(-1, 1)
    model.bn1.bias.data.uniform_(-1, 1)
    a = group(
        "conv1",
        4,
        [
            Member("conv1", "conv2d", "out", rows(4)),
            Member("bn1", "batch_norm", "channel", rows(4)),
            Member("dw", "conv2d", "in", rows(4)),
            Member("dw", "conv2d", "out", rows(4, 2)),  # shares its filter with dw's "in"
            Member("conv2", "conv2d", "in", rows(4, 2)),  # grouped: rows of group c // 4
        ],
        [Member("bn1", "batch_norm", "channel", rows(4))],
    )
    b = group(
        "conv2",
        6,
        [Member("conv2", "conv2d", "out", rows(6)), Member("fc", "linear", "in", rows(6, 4))],
        [Member("conv2", "conv2d", "out", rows(6))],
    )
    modules = dict(model.named_modules())
    got = group_saliency(model, [a, b], [], "magnitude")
    for gr in (a, b):
        want = []
        for i in range(gr.size):
            masks: dict[tuple[str, str], Tensor] = {}
            for member in gr.members:
                for name, mask in touched(modules[member.path], member, i).items():
                    key = (member.path, name)
                    masks[key] = masks[key] | mask if key in masks else mask
            want.append(
                sum(
                    float(getattr(modules[p], n).detach().abs()[m].double().sum())
                    for (p, n), m in masks.items()
                )
            )
        np.testing.assert_allclose(got[gr.id], want, rtol=1e-6)
    # one entry by hand: channel 0 removes conv1's filter 0 and bias 0, γ_0 and β_0, the
    # depthwise filters 0 and 1 (its input and output) with their biases, and column 0 of the
    # grouped conv's first three filters (group 0 of two reads input channels 0..3)
    with torch.no_grad():
        w = {name: p.abs().double() for name, p in model.named_parameters()}
        hand = (
            w["conv1.weight"][0].sum()
            + w["conv1.bias"][0]
            + w["bn1.weight"][0]
            + w["bn1.bias"][0]
            + w["dw.weight"][:2].sum()
            + w["dw.bias"][:2].sum()
            + w["conv2.weight"][:3, :2].sum()
        )
    np.testing.assert_allclose(got["conv1"][0], float(hand), rtol=1e-6)


def test_the_model_is_left_as_it_was_even_on_error() -> None:
    model, groups = tiny(True)
    model.train()
    model.bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def failing(z: Tensor, y: Tensor) -> Tensor:
        raise RuntimeError("loss failed")

    group_saliency(model, groups, data(), "sosp-h")
    with pytest.raises(RuntimeError, match="loss failed"):
        group_saliency(model, groups, data(), "taylor", failing)
    assert model.training and not model.bn1.training and model.bn2.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_input_is_refused_with_what_to_do() -> None:
    model, groups = tiny(True)
    with pytest.raises(InputError, match="saliency needs data"):
        group_saliency(model, groups, [], "taylor")
    with pytest.raises(InputError, match="magnitude, taylor, sosp-h, sosp-i"):
        group_saliency(model, groups, data(), "fisher")
    with pytest.raises(InputError, match="exact, gauss-newton"):
        group_saliency(model, groups, data(), hessian="diagonal")
    with pytest.raises(InputError, match=r"S = 7 .*MiB.*sosp-h"):
        group_saliency(model, groups, data(), "sosp-i", max_structures=6)
    lost = Member("layer9.conv", "conv2d", "in", rows(3))
    with pytest.raises(InputError, match=r"'layer9\.conv'"):
        group_saliency(model, [group("x", 3, [lost], [lost])], data(), "magnitude")


@pytest.mark.parametrize("method", ["sosp-h", "sosp-i"])
def test_a_float32_model_scores_as_in_float64_to_float32_precision(method: str) -> None:
    model, groups = tiny(True)
    batches = data()
    want = group_saliency(model, groups, batches, method)
    got = group_saliency(model.float(), groups, batches, method)  # float64 inputs are cast
    for key, value in want.items():
        assert got[key].dtype == np.float64
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6)
