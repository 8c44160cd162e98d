"""Channel saliency against explicit references: gate-space derivatives computed by scaling the
structures' parameters (no hooks) on the concatenated data, full parameter-space Hessians,
per-sample Jacobians, and finite differences of the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from saliency_reference import (
    SIZES,
    assert_scores,
    concat,
    data,
    explicit_jacobians,
    gate_terms,
    references,
    scaled_logits,
    softmax_hessians,
    tiny,
    tiny_structures,
)
from torch import Tensor
from torch.autograd.functional import hessian
from torch.func import functional_call

from dopant.codesign._saliency.gates import GatedNetwork, fisher_sum
from dopant.codesign.scores import group_saliency


@pytest.mark.parametrize("norm", [True, False])
def test_sosp_h_is_the_gradient_plus_half_the_hessian_times_ones(norm: bool) -> None:
    model, groups = tiny(norm)
    batches = data()
    g, h = gate_terms(model, tiny_structures(norm), batches)
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
    for (layer,), channels in tiny_structures(norm):
        for s in range(channels):
            mask = []
            for name, shape in zip(names, shapes, strict=True):
                m = torch.zeros(shape, dtype=torch.double)
                if name in (f"{layer}.weight", f"{layer}.bias"):
                    m[s] = 1.0
                mask.append(m.reshape(-1))
            structures.append(theta * torch.cat(mask))
    S = torch.stack(structures)  # [structures, parameters]
    g_c, h_c = gate_terms(model, tiny_structures(norm), [(x, y)])
    np.testing.assert_allclose((S @ grad).numpy(), g_c, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(
        (S @ H @ S.sum(0)).numpy(), h_c @ np.ones(len(g_c)), rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose((S @ H @ S.T).numpy(), h_c, rtol=1e-6, atol=1e-12)


def test_gauss_newton_is_j_transpose_lambda_j_times_ones() -> None:
    model, groups = tiny(True)
    batches = data()
    g, h = gate_terms(model, tiny_structures(True), batches)
    x, _ = concat(batches)
    J = explicit_jacobians(model, tiny_structures(True), x)
    lam = softmax_hessians(model(x).detach()) / len(x)  # the mean loss over all samples
    ones = torch.ones(J.shape[2], dtype=torch.double)
    gn = torch.einsum("nci,ncd,ndj,j->i", J, lam, J, ones).numpy()
    assert not np.allclose(gn, h @ np.ones(len(g)), rtol=1e-3)  # the approximation is one
    want = np.abs(g) + 0.5 * np.abs(gn)
    assert_scores(group_saliency(model, groups, batches, hessian="gauss-newton"), want)


def test_gauss_newton_with_a_given_loss_uses_its_hessian_in_logit_space() -> None:
    model, groups = tiny(False)
    torch.manual_seed(2)
    batches = [(x, torch.randn(len(x), 5, dtype=torch.double)) for x, _ in data()]
    g, _ = gate_terms(model, tiny_structures(False), batches, loss=F.mse_loss)
    J = explicit_jacobians(model, tiny_structures(False), concat(batches)[0])
    lam = 2.0 / J.shape[0] / J.shape[1]  # mse_loss averages over N*C entries: Λ = 2/(NC) I
    gn = lam * torch.einsum("nci,ncj,j->i", J, J, torch.ones(J.shape[2], dtype=torch.double))
    want = np.abs(g) + 0.5 * np.abs(gn.numpy())
    got = group_saliency(model, groups, batches, "sosp-h", F.mse_loss, hessian="gauss-newton")
    assert_scores(got, want)


def test_sosp_i_sums_the_per_sample_gauss_newton_matrix() -> None:
    model, groups = tiny(True)
    batches = data((6, 3))  # unequal batches: Q averages over samples
    g, _ = gate_terms(model, tiny_structures(True), batches)
    Js = [explicit_jacobians(model, tiny_structures(True), x) for x, _ in batches]
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
    x, y = concat(batches)
    logits = scaled_logits(model, tiny_structures(norm), x)
    eps = 1e-5

    def mean_loss(c: Tensor) -> float:  # over all samples: the loss of the concatenation
        with torch.no_grad():
            return float(F.cross_entropy(logits(c), y))

    ones = torch.ones(sum(SIZES), dtype=torch.double)
    step = torch.eye(len(ones), dtype=torch.double) * eps
    slope = [(mean_loss(ones + e) - mean_loss(ones - e)) / (2 * eps) for e in step]
    assert_scores(group_saliency(model, groups, batches, "taylor"), np.abs(slope), rtol=1e-6)


@pytest.mark.parametrize(
    ("method", "hessian"),
    [("taylor", "exact"), ("sosp-h", "exact"), ("sosp-h", "gauss-newton"), ("sosp-i", "exact")],
)
def test_unequal_batches_weigh_every_sample_alike(method: str, hessian: str) -> None:
    """g, H_c 𝟙 and Q are means over all N samples: the loss is a batch mean, so the gradient
    of the dataset's mean loss is Σ_b n_b g_b / N, not the mean of the batches' gradients."""
    model, groups = tiny(True)
    batches = data((7, 1))
    structures = tiny_structures(True)
    g, _ = gate_terms(model, structures, batches)
    per_batch = np.mean([gate_terms(model, structures, [b])[0] for b in batches], axis=0)
    assert not np.allclose(per_batch, g, rtol=0.1)  # the two means differ on these batches
    got = group_saliency(model, groups, batches, method, hessian=hessian)
    assert_scores(got, references(model, structures, batches)[method, hessian])


@pytest.mark.parametrize("method", ["sosp-h", "sosp-i"])
def test_a_float32_model_scores_as_in_float64_to_float32_precision(method: str) -> None:
    model, groups = tiny(True)
    batches = data()
    want = group_saliency(model, groups, batches, method)
    got = group_saliency(model.float(), groups, batches, method)  # float64 inputs are cast
    for key, value in want.items():
        assert got[key].dtype == np.float64
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-6)
