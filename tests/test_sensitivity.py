"""Bit-width sensitivity (`codesign.sensitivity`, HAWQ-V3) against independent references.

The tiny network is conv(1→3, 3x3) → ReLU → flatten → linear(48→4) on 6x6 images (223
parameters). The references write its forward pass again by hand (`explicit_loss`) and take
exact Hessians with `torch.autograd.functional.hessian`; quantization is recomputed here in
numpy from its definition (symmetric per-channel weights, zero-point-0 activations).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.functional import hessian

from dopant.codesign._sensitivity.traces import loss_factors
from dopant.codesign.sensitivity import (
    Sensitivity,
    bit_sensitivity,
    dequantized_activation,
    weight_error,
)
from dopant.support.errors import DopantError, InputError


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(48, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().double()


def batch(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (n,), generator=g
    )


def hidden(model: Tiny, x: Tensor) -> Tensor:
    """The input of `fc`."""
    return torch.relu(model.conv(x)).flatten(1)


def np_weight(w: np.ndarray, bits: int, per_channel: bool = True) -> np.ndarray:
    """Symmetric quantization by its definition: per row, scale = max|w| / (2^(b-1) - 1),
    q = clip(round half to even (w / scale), ±(2^(b-1) - 1)), back as q · scale."""
    levels = 2 ** (bits - 1) - 1
    rows = w.reshape(len(w), -1) if per_channel else w.reshape(1, -1)
    scale = np.abs(rows).max(axis=1, keepdims=True) / levels
    return (np.clip(np.rint(rows / scale), -levels, levels) * scale).reshape(w.shape)


def np_act(x: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Zero point 0: unsigned [0, 2^b - 1] at hi / (2^b - 1) when lo >= 0, else signed
    [-2^(b-1), 2^(b-1) - 1] at max(|lo|, |hi|) / (2^(b-1) - 1); round half to even."""
    if lo >= 0:
        scale = hi / (2**bits - 1)
        return np.clip(np.rint(x / scale), 0, 2**bits - 1) * scale
    scale = max(-lo, hi) / (2 ** (bits - 1) - 1)
    return np.clip(np.rint(x / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * scale


def sq(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).sum())


def test_weight_error_by_hand() -> None:
    w = torch.tensor([[0.5, -0.25, 0.1], [1.0, 0.3, -0.7]])
    # 2 bits (ternary), per channel: scales 0.5 and 1.0; row 0: w/s = [1, -0.5, 0.2] rounds
    # (half to even) to [1, 0, 0], error 0.25² + 0.1² = 0.0725; row 1: [1, 0.3, -0.7] -> [1, 0,
    # -1], error 0.3² + 0.3² = 0.18; total 0.2525.
    assert weight_error(w, 2) == pytest.approx(0.2525)
    # per tensor, one scale 1.0: row 0 -> [0.5 -> 0, -0.25 -> 0, 0.1 -> 0], error 0.3225
    assert weight_error(w, 2, per_channel=False) == pytest.approx(0.3225 + 0.18)
    # 4 bits: scales 0.5/7, 1/7; row 0: w/s = [7, -3.5, 1.4] -> [7, -4, 1], errors (0.25/7)²,
    # (0.2/7)²; row 1: [7, 2.1, -4.9] -> [7, 2, -5], errors 2 (0.1/7)²: (0.0625 + 0.04 +
    # 0.02) / 49 = 0.0025.
    assert weight_error(w, 4) == pytest.approx(0.0025)
    conv = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    for bits in (2, 4, 8):
        for per_channel in (True, False):
            expected = sq(np_weight(conv.numpy(), bits, per_channel), conv.numpy())
            assert weight_error(conv, bits, per_channel) == pytest.approx(expected, rel=1e-12)


def test_activation_quantizer_by_hand() -> None:
    # unsigned [0, 1] at 2 bits: scale 1/3; [0, 0.3, 1, 0.55, 1.2] / s = [0, 0.9, 3, 1.65, 3.6]
    # -> [0, 1, 3, 2, 3 (clamped)]
    x = torch.tensor([0.0, 0.3, 1.0, 0.55, 1.2])
    assert dequantized_activation(x, 0.0, 1.0, 2) == pytest.approx([0, 1 / 3, 1, 2 / 3, 1])
    # signed [-1, 0.5] at 4 bits: scale 1/7; [-1, 0.5, 0.2] / s = [-7, 3.5, 1.4] -> [-7, 4, 1]
    x = torch.tensor([-1.0, 0.5, 0.2])
    assert dequantized_activation(x, -1.0, 0.5, 4) == pytest.approx([-1, 4 / 7, 1 / 7])


SIZES = [27, 192, 4 * 36, 4 * 48]  # conv weight, fc weight, the inputs of a batch of 4
BLOCKS = [slice(e - n, e) for n, e in zip(SIZES, np.cumsum(SIZES), strict=True)]


def explicit_logits(model: Tiny, x: Tensor):
    """The logits as a function of one flat vector (conv weight, fc weight, perturbation of the
    conv's input, perturbation of the fc's input), the forward pass written out again; and
    that vector at the model's weights, no perturbation."""
    shapes = [model.conv.weight.shape, model.fc.weight.shape, x.shape, (len(x), 48)]

    def f(flat: Tensor) -> Tensor:
        wc, wf, dx, dh = (p.view(s) for p, s in zip(torch.split(flat, SIZES), shapes, strict=True))
        h = torch.relu(F.conv2d(x + dx, wc, model.conv.bias)).flatten(1) + dh
        return F.linear(h, wf, model.fc.bias)

    flat = torch.cat([model.conv.weight.flatten(), model.fc.weight.flatten()])
    return f, torch.cat([flat, torch.zeros(sum(SIZES[2:]), dtype=flat.dtype)]).detach()


def estimated_traces(model: Tiny, x: Tensor, y: Tensor, got: Sensitivity) -> list[float]:
    """The four traces a 4-bit result implies: cost = ½ (Tr / n) · ‖Q(·) − ·‖²."""
    with torch.no_grad():
        h = hidden(model, x)
    wc, wf = model.conv.weight.detach().numpy(), model.fc.weight.detach().numpy()
    errors = [
        sq(np_weight(wc, 4), wc),
        sq(np_weight(wf, 4), wf),
        sq(np_act(x.numpy(), float(x.min()), float(x.max()), 4), x.numpy()),
        sq(np_act(h.numpy(), 0.0, float(h.max()), 4), h.numpy()),
    ]
    costs = [got.weight["conv"][4], got.weight["fc"][4], got.act["conv"][4], got.act["fc"][4]]
    return [2 * c * n / e for c, n, e in zip(costs, SIZES, errors, strict=True)]


def off_diagonal_variance(m: Tensor) -> float:
    """2 Σ_{j≠k} M_jk²: the variance of uᵀMu for a Rademacher u and a symmetric M."""
    return 2 * float((m**2).sum() - (torch.diagonal(m) ** 2).sum())


def test_hutchinson_agrees_with_the_exact_trace() -> None:
    model, (x, y) = tiny(), batch(4, 1)
    logits, at = explicit_logits(model, x)
    h = hessian(lambda flat: F.cross_entropy(logits(flat), y), at, vectorize=True)
    probes = 150
    got = bit_sensitivity(model, ["conv", "fc"], [(x, y)], [4], probes=probes, hessian="exact")
    for i, estimate in enumerate(estimated_traces(model, x, y, got)):
        block = BLOCKS[i]
        trace = float(torch.diagonal(h[block, block]).sum())
        # One Rademacher v per group (weights {0, 1}, inputs {2, 3}): Var(vᵀHv|_i) is
        # 2 Σ_{j≠k in i} H_jk² + Σ_{j in i, k in the group's other block} H_jk².
        other = BLOCKS[(i // 2) * 2 + 1 - i % 2]
        variance = off_diagonal_variance(h[block, block]) + float((h[block, other] ** 2).sum())
        standard_error = math.sqrt(variance / probes)
        print(f"block {i}: estimate {estimate:.4f}, trace {trace:.4f} ± {standard_error:.4f}")
        assert abs(estimate - trace) <= 3 * standard_error
        if i > 0:  # the check has teeth (a factor of 2 would fail it), except for the conv
            # weights, whose mixed derivatives with the fc weights dominate their variance
            assert 3 * standard_error < 0.5 * abs(trace)


def test_gauss_newton_estimate_agrees_with_the_exact_trace() -> None:
    model, (x, y) = tiny(), batch(4, 1)
    logits, at = explicit_logits(model, x)
    h = hessian(lambda flat: F.cross_entropy(logits(flat), y), at, vectorize=True)
    jac = torch.autograd.functional.jacobian(logits, at, vectorize=True).reshape(16, -1)
    factors = loss_factors(F.cross_entropy, logits(at), y)  # B_n B_nᵀ = Λ_n / N
    b = torch.block_diag(*factors)
    probes = 60
    got = bit_sensitivity(model, ["conv", "fc"], [(x, y)], [4], probes=probes)
    for i, estimate in enumerate(estimated_traces(model, x, y, got)):
        block = BLOCKS[i]
        trace = float(torch.diagonal(h[block, block]).sum())  # the Hessian's own block
        # ‖J_iᵀ B u‖² = uᵀ M u with M = Bᵀ J_i J_iᵀ B: only the block's own Jacobian enters
        m = b.T @ jac[:, block] @ jac[:, block].T @ b
        assert float(torch.trace(m)) == pytest.approx(trace, rel=1e-9)  # GN block = H block
        standard_error = math.sqrt(off_diagonal_variance(m) / probes)
        print(f"block {i}: estimate {estimate:.4f}, trace {trace:.4f} ± {standard_error:.4f}")
        assert abs(estimate - trace) <= 3 * standard_error
        assert 3 * standard_error < 0.3 * trace  # tighter than `exact` with fewer probes


@pytest.mark.parametrize("curvature", ["exact", "gauss-newton"])
def test_exact_traces_over_batches_of_two_sizes(curvature: str) -> None:
    model = tiny()
    data = [batch(2, 2), batch(3, 3)]
    got = bit_sensitivity(model, ["conv", "fc"], data, [2, 8], probes=0, hessian=curvature)
    xs = torch.cat([x for x, _ in data])
    with torch.no_grad():
        hs = hidden(model, xs)
    lo, hi, top = float(xs.min()), float(xs.max()), float(hs.max())  # ranges over all batches
    for name in ("conv", "fc"):
        w = getattr(model, name).weight.detach()
        traces = []
        for x, y in data:

            def loss(
                v: Tensor, x: Tensor = x, y: Tensor = y, name: str = name, w: Tensor = w
            ) -> Tensor:
                params = {f"{name}.weight": v.view(w.shape)}
                return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

            traces.append(len(x) * float(torch.trace(hessian(loss, w.flatten(), vectorize=True))))
        for bits in (2, 8):
            expected = 0.5 * sum(traces) / 5 / w.numel() * sq(np_weight(w.numpy(), bits), w.numpy())
            assert got.weight[name][bits] == pytest.approx(expected, rel=1e-9)
    for bits in (2, 8):
        conv_cost = fc_cost = 0.0
        for x, y in data:
            # the Hessian w.r.t. the model's input itself, and w.r.t. the fc's input
            h_x = hessian(lambda v, y=y: F.cross_entropy(model(v), y), x, vectorize=True)
            h_in = hidden(model, x).detach()
            h_h = hessian(lambda v, y=y: F.cross_entropy(model.fc(v), y), h_in, vectorize=True)
            tr_x = float(h_x.reshape(x.numel(), -1).trace())
            tr_h = float(h_h.reshape(h_in.numel(), -1).trace())
            conv_cost += (
                len(x) * 0.5 * tr_x / x.numel() * sq(np_act(x.numpy(), lo, hi, bits), x.numpy())
            )
            fc_cost += (
                len(x)
                * 0.5
                * tr_h
                / h_in.numel()
                * sq(np_act(h_in.numpy(), 0.0, top, bits), h_in.numpy())
            )
        assert got.act["conv"][bits] == pytest.approx(conv_cost / 5, rel=1e-9)
        assert got.act["fc"][bits] == pytest.approx(fc_cost / 5, rel=1e-9)


def test_output_method_is_the_layer_output_error() -> None:
    model = tiny()
    data = [batch(3, 4), batch(5, 5)]
    got = bit_sensitivity(model, ["conv", "fc"], data, [2, 4], "output")
    xs = torch.cat([x for x, _ in data])
    with torch.no_grad():
        hs = hidden(model, xs)
        for bits in (2, 4):
            wc = torch.as_tensor(np_weight(model.conv.weight.numpy(), bits))
            wf = torch.as_tensor(np_weight(model.fc.weight.numpy(), bits))
            qx = torch.as_tensor(np_act(xs.numpy(), float(xs.min()), float(xs.max()), bits))
            qh = torch.as_tensor(np_act(hs.numpy(), 0.0, float(hs.max()), bits))
            conv, fc = model.conv(xs), model.fc(hs)
            bc, bf = model.conv.bias, model.fc.bias
            assert got.weight["conv"][bits] == pytest.approx(
                float(F.mse_loss(F.conv2d(xs, wc, bc), conv))
            )
            assert got.weight["fc"][bits] == pytest.approx(
                float(F.mse_loss(F.linear(hs, wf, bf), fc))
            )
            assert got.act["conv"][bits] == pytest.approx(float(F.mse_loss(model.conv(qx), conv)))
            assert got.act["fc"][bits] == pytest.approx(float(F.mse_loss(model.fc(qh), fc)))


def test_loss_method_is_the_loss_increase() -> None:
    model = tiny()
    data = [batch(3, 4), batch(5, 5)]
    got = bit_sensitivity(model, ["conv", "fc"], data, [2, 4], "loss")
    xs, ys = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
    with torch.no_grad():
        hs = hidden(model, xs)
        base = F.cross_entropy(model.fc(hs), ys)

        def rise(logits: Tensor) -> float:
            return max(float(F.cross_entropy(logits, ys) - base), 0.0)

        bc, bf = model.conv.bias, model.fc.bias
        for bits in (2, 4):
            wc = torch.as_tensor(np_weight(model.conv.weight.numpy(), bits))
            wf = torch.as_tensor(np_weight(model.fc.weight.numpy(), bits))
            qx = torch.as_tensor(np_act(xs.numpy(), float(xs.min()), float(xs.max()), bits))
            qh = torch.as_tensor(np_act(hs.numpy(), 0.0, float(hs.max()), bits))
            by_conv = model.fc(torch.relu(F.conv2d(xs, wc, bc)).flatten(1))
            assert got.weight["conv"][bits] == pytest.approx(rise(by_conv), abs=1e-12)
            assert got.weight["fc"][bits] == pytest.approx(rise(F.linear(hs, wf, bf)), abs=1e-12)
            by_input = model.fc(torch.relu(model.conv(qx)).flatten(1))
            assert got.act["conv"][bits] == pytest.approx(rise(by_input), abs=1e-12)
            assert got.act["fc"][bits] == pytest.approx(rise(model.fc(qh)), abs=1e-12)
    assert any(v > 0 for table in (got.weight, got.act) for r in table.values() for v in r.values())


@pytest.fixture(scope="module")
def trained() -> tuple[Tiny, list[tuple[Tensor, Tensor]]]:
    """The tiny net fitted for 100 steps to a random linear teacher's labels."""
    model, (x, _) = tiny(), batch(128, 6)
    teacher = torch.randn(36, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y = (x.flatten(1) @ teacher).argmax(1)
    for _ in range(100):  # plain gradient descent (torch.optim's first step imports slowly)
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    return model, [(x[:64], y[:64]), (x[64:], y[64:])]


@pytest.mark.parametrize(
    ("method", "curvature"),
    [
        ("hessian", "gauss-newton"),
        ("hessian", "exact"),
        ("output", "gauss-newton"),
        ("loss", "gauss-newton"),
    ],
)
def test_fewer_bits_cost_more(method: str, curvature: str, trained: tuple[Tiny, list]) -> None:
    model, data = trained
    got = bit_sensitivity(model, ["conv", "fc"], data, method=method, hessian=curvature)
    for table in (got.weight, got.act):
        for name in ("conv", "fc"):
            row = table[name]
            if method == "loss":  # a measured loss may fall at wide widths: floored to 0
                assert row[2] > row[4] >= row[8] >= 0, (name, table)
            else:
                assert row[2] > row[4] > row[8] > 0, (method, name, table)


def test_the_model_is_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    )
    model.train()
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0]))]
    for method in ("hessian", "loss", "output"):
        bit_sensitivity(model, ["0", "4"], data, method=method, probes=2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model] == [True, True, False, True, True]
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_json_round_trip() -> None:
    got = bit_sensitivity(tiny(), ["conv", "fc"], [batch(4, 8)], [2, 4, 8], probes=2)
    assert Sensitivity.from_json(got.to_json()) == got
    assert got.cost("fc", 4, 8) == got.weight["fc"][4] + got.act["fc"][8]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "s.json:1:2: not valid JSON"),
        ("[]", "s.json is not a bit sensitivity"),
        ('{"format": "dopant-bit-sensitivity", "version": 2}', "'version' must be 1"),
        (
            '{"format": "dopant-bit-sensitivity", "version": 1, "method": "mse"}',
            "'method' must be one of hessian, loss, output",
        ),
        (
            '{"format": "dopant-bit-sensitivity", "version": 1, "method": "output", "weight": [], "act": {}}',
            "s.json: weight must be an object",
        ),
        (
            '{"format": "dopant-bit-sensitivity", "version": 1, "method": "output", "weight": {"fc": 3}, "act": {}}',
            r's.json: weight\["fc"\] must be',
        ),
        (
            '{"format": "dopant-bit-sensitivity", "version": 1, "method": "output", "weight": {}, "act": {"fc": {"3": 1}}}',
            r'act\["fc"\]: "3" is not a bit',
        ),
        (
            '{"format": "dopant-bit-sensitivity", "version": 1, "method": "output", "weight": {"fc": {"2": "x"}}, "act": {}}',
            r'weight\["fc"\]\["2"\] is \'x\'',
        ),
    ],
)
def test_bad_json(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Sensitivity.from_json(text, "s.json")


def test_bad_input() -> None:
    model, data = tiny(), [batch(4, 9)]
    with pytest.raises(InputError, match=r"'relu' is not a Conv2d or Linear layer .* conv, fc"):
        bit_sensitivity(model, ["relu"], data)
    with pytest.raises(DopantError, match="widths=3 is not supported"):
        bit_sensitivity(model, ["fc"], data, [3])
    with pytest.raises(InputError, match="batches were empty"):
        bit_sensitivity(model, ["fc"], [])
    with pytest.raises(InputError, match="method 'fisher' is not known"):
        bit_sensitivity(model, ["fc"], data, method="fisher")
    with pytest.raises(InputError, match="hessian 'fisher' is not known"):
        bit_sensitivity(model, ["fc"], data, hessian="fisher")
    with pytest.raises(InputError, match="probes=-1 is negative"):
        bit_sensitivity(model, ["fc"], data, probes=-1)
    with pytest.raises(InputError, match=r"label outside 0 \.\. 3"):
        bit_sensitivity(model, ["fc"], [(data[0][0], data[0][1] + 4)])
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(InputError, match="'0' runs more than once"):
        bit_sensitivity(twice, ["0"], [(torch.randn(2, 4), torch.tensor([0, 1]))])
