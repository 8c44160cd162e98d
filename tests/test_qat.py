"""The fake-quant network: agreement with the integer reference (zoo models at four widths, both
roundings, a model with a concat and a standalone clamp), LSQ gradients against LSQ written out
in real values, export after training, fine-tuning, and bad input."""

from __future__ import annotations

import math
import re
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.calibrate import calibrate
from dopant.compiler.fakequant import FakeQuantNetwork, finetune
from dopant.compiler.fakequant.nodes import exact_product
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.models import zoo
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import (
    AvgPool2DOp,
    ConstantOp,
    Conv2DOp,
    DequantizeOp,
    MaxPool2DOp,
    QnnOp,
    QuantParamsAttr,
    ReluOp,
    RequantizeOp,
)
from dopant.dialects.qnn.base import ints
from dopant.runtime import reference
from dopant.support.errors import InputError

WIDTHS = [(8, 8), (4, 8), (4, 4), (2, 8)]


def _images(rng: np.random.Generator, n: int, sample: tuple[int, ...]) -> np.ndarray:
    """Image-like inputs: smooth blobs on a dark background (low-resolution noise upsampled),
    normalized like MNIST."""
    c, h, w = sample
    low = torch.from_numpy(rng.standard_normal((n, c, max(h // 4, 1), max(w // 4, 1))))
    smooth = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False).numpy()
    pixels = np.clip(smooth - 0.3, 0.0, 1.0)
    return ((pixels - 0.13) / 0.31).astype(np.float32)


def _float_ir(model: nn.Module, sample: tuple[int, ...]) -> tuple[ModuleOp, np.ndarray]:
    """`model` imported, canonicalized and calibrated on image-like data, with test inputs:
    8 of standard normal noise, then 8 image-like ones not seen in calibration."""
    rng = np.random.default_rng(0)
    images = _images(rng, 24, sample)
    x = np.concatenate([rng.standard_normal((8, *sample)).astype(np.float32), images[16:]])
    module = import_model(model, torch.from_numpy(images[:1]))
    run_pipeline(module, "fold-batchnorm,fuse-activation")
    calibrate(module, images[:16], "minmax")
    return module, x


@cache
def _zoo_ir(name: str) -> tuple[ModuleOp, np.ndarray]:
    entry = zoo.get(name)
    return _float_ir(entry.build(), entry.input_shape[1:])


def _quantized(module: ModuleOp, w: int, a: int, rounding: str = "gemmlowp") -> ModuleOp:
    q = module.clone()
    run_pipeline(q, f"quantize{{weight-bits={w} act-bits={a} rounding={rounding}}}")
    return q


def _agreement(q: ModuleOp, net: FakeQuantNetwork, x: np.ndarray) -> tuple[float, float]:
    """(fraction within one output LSB, fraction bit-identical) of net(x) against the integer
    reference on `q`."""
    batched = q.clone()
    run_pipeline(batched, f"set-batch{{size={len(x)}}}")
    (want,) = reference.run(batched, x)
    got = net(torch.from_numpy(x)).detach().numpy()
    (dequantize,) = [op for op in q.walk() if isinstance(op, DequantizeOp)]
    lsb = dequantize.params.scales[0]
    steps = np.abs(got.astype(np.float64) - want) / lsb
    return float(np.mean(steps <= 1.0 + 1e-9)), float(np.mean(got == want))


def _check_agreement(q: ModuleOp, net: FakeQuantNetwork, x: np.ndarray) -> None:
    for inputs in (x[:8], x[8:]):  # noise, then image-like
        within, exact = _agreement(q, net, inputs)
        assert within >= 0.999
        assert exact == 1.0  # the forward pass takes each rounding from intops itself


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "mobilenetv2", "mlp"])
@pytest.mark.parametrize(("w", "a"), WIDTHS)
def test_fake_quant_matches_the_integer_reference(name: str, w: int, a: int) -> None:
    module, x = _zoo_ir(name)
    q = _quantized(module, w, a)
    _check_agreement(q, FakeQuantNetwork(q), x)


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2"])
def test_without_gradients_the_float32_products_stay_bit_exact(name: str) -> None:
    """Without gradients, convs and linears whose partial sums stay under 2^24 run in float32
    (nodes.exact_product); the outputs must still be the integer reference's, bit for bit."""
    module, x = _zoo_ir(name)
    q = _quantized(module, 8, 8)
    batched = q.clone()
    run_pipeline(batched, f"set-batch{{size={len(x)}}}")
    (want,) = reference.run(batched, x)
    with torch.no_grad():
        got = FakeQuantNetwork(q)(torch.from_numpy(x)).numpy()
    assert np.array_equal(got, want)


def test_float32_products_are_refused_where_they_would_round() -> None:
    """2^24 + 1 has no float32: such a product stays in float64, exact."""
    x = torch.tensor([[2.0**24 + 1, 3.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        assert exact_product(x, w, None).item() == 2**24 + 4  # by hand: (2^24 + 1) + 3
        small = torch.tensor([[2.0**20 + 1, 3.0]], dtype=torch.float64)
        got = exact_product(small, w, None)
    assert got.dtype == torch.float64 and got.item() == 2**20 + 4


@pytest.mark.parametrize(("w", "a"), WIDTHS)
def test_fake_quant_matches_single_rounding(w: int, a: int) -> None:
    module, x = _zoo_ir("resnet8")  # convs, residual adds, a global pool
    q = _quantized(module, w, a, "single")
    _check_agreement(q, FakeQuantNetwork(q), x)


class Branches(nn.Module):
    """Two branches of different ranges concatenated (so the concat rescales one), a ReLU6
    left standalone after a max pool, a max pool over signed values whose padding and ceil-mode
    overhang matter, a zero-padded max pool, average pools with and without padding counted,
    a conv with asymmetric padding and a standalone ReLU. Takes 14 x 14 inputs."""

    def __init__(self, relu6_scale: float) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.pool_a = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.relu6 = nn.ReLU6()
        self.avg_a = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.pool_b = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.avg = nn.AvgPool2d(2, stride=2, padding=1, ceil_mode=True)
        self.head = nn.Conv2d(8, 6, 3)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.a.weight.mul_(relu6_scale)
            self.b.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.avg_a(self.relu6(self.pool_a(torch.relu(self.a(x)))))
        b = self.pool_b(self.b(x))
        y = self.pool(F.pad(self.avg(torch.cat([a, b], dim=1)), (1, 0, 1, 0)))
        y = self.head(F.pad(y, (1, 0, 0, 1)))  # asymmetric zero padding, folded into the conv
        return self.fc(torch.flatten(self.relu(F.adaptive_avg_pool2d(y, 1)), 1))


def _branches(relu6_scale: float, w: int = 4, a: int = 8) -> tuple[ModuleOp, np.ndarray]:
    torch.manual_seed(0)
    module, x = _float_ir(Branches(relu6_scale).eval(), (1, 14, 14))
    return _quantized(module, w, a), x


def test_fake_quant_matches_concat_rescaling_and_a_standalone_clamp() -> None:
    # Branch a stays below 6, so the quantize pass lowers its ReLU6 consistently (see below).
    q, x = _branches(relu6_scale=0.5)
    requantizes = {op.path.data: op for op in q.walk() if isinstance(op, RequantizeOp)}
    # Branch b sets the concat's range; branch a is rescaled to it.
    assert "cat/requantize_0" in requantizes and "cat/requantize_1" not in requantizes
    assert str(requantizes["relu6"].act) == "#qnn.act<clamp 0.0, 6.0>"
    pools = [op for op in q.walk() if isinstance(op, MaxPool2DOp | AvgPool2DOp)]
    assert any(isinstance(op, MaxPool2DOp) and op.zero_pad is not None for op in pools)
    assert any(op.ceil_mode is not None for op in pools)
    assert any(isinstance(op, ReluOp) for op in q.walk())
    (head,) = [op for op in q.walk() if isinstance(op, Conv2DOp) and op.path.data == "head"]
    assert ints(head.padding) == (0, 1, 1, 0)
    net = FakeQuantNetwork(q)
    # The concat's inputs share one learned step.
    assert "cat_requantize_0" in net.steps and "b_requantize" not in net.steps
    _check_agreement(q, net, x)


def test_fake_quant_matches_an_active_standalone_relu6() -> None:
    q, x = _branches(relu6_scale=8.0)  # branch a reaches past 6
    _check_agreement(q, FakeQuantNetwork(q), x)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _grad_scaled(s: torch.Tensor, g: float) -> torch.Tensor:
    return s * g + (s - s * g).detach()


def _lsq(v: torch.Tensor, s: torch.Tensor, qmin: float, qmax: float) -> torch.Tensor:
    """LSQ in real values: round(clamp(v / s)) * s, rounding straight through."""
    t = torch.clamp(v / s, qmin, qmax)
    return (t + (torch.round(t) - t).detach()) * s


def test_gradients_are_lsq_gradients() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    data = rng.standard_normal((64, 3)).astype(np.float32)
    module = import_model(Tiny().eval(), torch.from_numpy(data[:1]))
    run_pipeline(module, "fuse-activation")  # the ReLU becomes fc1's clamp to [0, 255]
    calibrate(module, data[:48], "minmax")  # the last samples reach past the ranges
    q = _quantized(module, 4, 8, "single")  # one rounding: exactly round(v / s) off ties
    net = FakeQuantNetwork(q)
    x = torch.from_numpy(data[32:])
    weights = torch.from_numpy(rng.standard_normal((32, 2)))
    (net(x).double() * weights).sum().backward()

    # The same network written as LSQ in real values, from the same parameters.
    p = {name: t.detach().clone().requires_grad_() for name, t in net.named_parameters()}
    levels, big = 7, float(2**31)
    s_in = _grad_scaled(p["steps.input"], 1 / math.sqrt(3 * 127))
    s_h = _grad_scaled(p["steps.fc1_requantize"], 1 / math.sqrt(4 * 255))
    s_y = _grad_scaled(p["steps.fc2_requantize"], 1 / math.sqrt(2 * 127))
    h = _lsq(x.double(), s_in, -128, 127)
    for layer, s_out, lo, hi in (("fc1", s_h, 0, 255), ("fc2", s_y, -128, 127)):
        fan_in = p[f"layers.{layer}.weight"].shape[1]
        s_w = _grad_scaled(p[f"layers.{layer}.weight_step"], 1 / math.sqrt(fan_in * levels))
        w = _lsq(p[f"layers.{layer}.weight"], s_w[:, None], -levels, levels)
        s_in_layer = s_in if layer == "fc1" else s_h
        b = _lsq(p[f"layers.{layer}.bias"], s_in_layer * s_w, -big, big - 1)
        h = _lsq(h @ w.T + b, s_out, lo, hi)
    y = h.float()  # as dequantize returns f32, so the gradients pass f32 alike
    (y.double() * weights).sum().backward()

    assert torch.equal(net(x), y)
    for name, param in net.named_parameters():
        assert param.grad is not None and p[name].grad is not None
        assert torch.allclose(param.grad, p[name].grad, rtol=1e-9, atol=1e-12), name
        assert param.grad.abs().max() > 0, name


def test_parameters_start_at_the_integer_network() -> None:
    module, _ = _zoo_ir("lenet5")
    q = _quantized(module, 4, 8)
    net = FakeQuantNetwork(q)
    weight = next(
        op
        for op in q.walk()
        if isinstance(op, ConstantOp) and op.path and op.path.data == "features.0.weight"
    )
    assert isinstance(weight.params, QuantParamsAttr)
    layer = net.layers["features_0"]
    scales = np.asarray(weight.params.scales)
    assert np.array_equal(layer.weight_step.detach().numpy(), scales)
    q_w = weight.numpy().astype(np.float64) * scales[:, None, None, None]
    assert np.array_equal(layer.weight.detach().numpy(), q_w)
    assert set(net.steps) >= {"input", "features_0_requantize", "classifier_5_requantize"}
    # Exporting the untrained network gives back the IR it was built from, digit for digit.
    assert ir_text(net.export()) == ir_text(q)


def _changed(before: ModuleOp, after: ModuleOp) -> tuple[int, int]:
    """How many quantized constants changed integers, and how many parameters changed scales."""
    values = scales = 0
    for old, new in zip(before.walk(), after.walk(), strict=True):
        if isinstance(old, ConstantOp) and isinstance(new, ConstantOp):
            values += not np.array_equal(old.numpy(), new.numpy())
        for name, attr in old.properties.items():
            if isinstance(attr, QuantParamsAttr):
                new_attr = new.properties[name]
                assert isinstance(new_attr, QuantParamsAttr)
                assert new_attr.element_type == attr.element_type and new_attr.axis == attr.axis
                scales += new_attr.scales != attr.scales
    return values, scales


@pytest.mark.parametrize("source", ["resnet8", "branches"])
def test_export_after_training_agrees_again(source: str) -> None:
    if source == "branches":
        q, x = _branches(relu6_scale=0.5)
    else:
        module, x = _zoo_ir(source)
        q = _quantized(module, 4, 8)
    net = FakeQuantNetwork(q)
    labels = np.arange(len(x)) % 3
    finetune(net, x, labels, epochs=2, batch_size=8, lr=1e-2)
    exported = net.export()

    values, scales = _changed(q, exported)
    assert values >= 3 and scales >= 5
    paths = [op.path.data for op in q.walk() if isinstance(op, QnnOp)]
    assert [op.path.data for op in exported.walk() if isinstance(op, QnnOp)] == paths
    assert parse_ir(ir_text(exported)).is_structurally_equivalent(exported)  # it verifies
    _check_agreement(exported, net, x)
    if source == "branches":
        shared = [
            op.out_params
            for op in exported.walk()
            if isinstance(op, RequantizeOp) and op.path.data in ("b/requantize", "cat/requantize_0")
        ]
        assert len(shared) == 2 and shared[0] == shared[1]


def test_finetune_lowers_the_loss_on_a_two_class_problem() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 96)
    pattern = _images(rng, 1, (1, 28, 28))[0]
    x = (
        rng.standard_normal((96, 1, 28, 28))
        + np.where(labels, 1, -1)[:, None, None, None] * pattern
    )
    x = x.astype(np.float32)
    module = import_model(zoo.get("mlp").build(num_classes=2), torch.from_numpy(x[:1]))
    calibrate(module, x, "minmax")
    q = _quantized(module, 4, 8)
    losses = finetune(FakeQuantNetwork(q), x, labels, epochs=4, batch_size=32, lr=1e-3)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]
    again = finetune(FakeQuantNetwork(q), x, labels, epochs=1, batch_size=32, lr=1e-3)
    assert again == losses[:1]  # the seed fixes the batches


QUANTIZE = 'qnn.quantize %x to <si8, scale = [0.5], zp = [ZP]> at "input" : tensor<1x2xf32> -> tensor<1x2xsi8>'
DEQUANTIZE = 'qnn.dequantize %V from <si8, scale = [0.5], zp = [0]> at "output" : tensor<1x2xsi8> -> tensor<1x2xf32>'


def _ir(*body: str) -> str:
    lines = "\n  ".join(body)
    return f"func.func @forward(%x: tensor<1x2xf32>) -> tensor<1x2xf32> {{\n  {lines}\n}}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _ir(
                '%r = qnn.relu %x at "act" : tensor<1x2xf32>',
                "func.return %r : tensor<1x2xf32>",
            ),
            'qnn.relu at "act" computes in f32',
        ),
        (
            _ir(
                "%q = " + QUANTIZE.replace("ZP", "0"),
                "%c = builtin.unrealized_conversion_cast %q : tensor<1x2xsi8> to tensor<1x2xsi8>",
                "%y = " + DEQUANTIZE.replace("%V", "%c"),
                "func.return %y : tensor<1x2xf32>",
            ),
            "builtin.unrealized_conversion_cast is not an op the fake-quant network simulates",
        ),
        (
            _ir(
                "%q = " + QUANTIZE.replace("ZP", "3"),
                "%y = " + DEQUANTIZE.replace("%V", "%q"),
                "func.return %y : tensor<1x2xf32>",
            ),
            'qnn.quantize at "input" has nonzero zero points',
        ),
        (
            _ir(
                "%q = " + QUANTIZE.replace("ZP", "0"),
                '%w = qnn.constant dense<[[1, 2], [3, 4]]> : tensor<2x2xsi8> params <si8, axis = 0, scale = [0.1, 0.2], zp = [0, 0]> at "fc.weight"',
                '%a = qnn.linear %q, %w at "fc" : (tensor<1x2xsi8>, tensor<2x2xsi8>) -> tensor<1x2xsi32>',
                '%r = qnn.relu %a at "relu" : tensor<1x2xsi32>',
                "func.return %a : tensor<1x2xsi32>",
            ).replace("-> tensor<1x2xf32> {", "-> tensor<1x2xsi32> {"),
            'qnn.relu at "relu" reads a value that is not an integer activation',
        ),
    ],
)
def test_ir_it_cannot_model_is_refused(text: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        FakeQuantNetwork(parse_ir(text))


def test_float_zoo_module_is_refused_naming_the_op() -> None:
    module, _ = _zoo_ir("lenet5")
    with pytest.raises(InputError, match=re.escape('qnn.conv2d at "features.0" computes in f32')):
        FakeQuantNetwork(module)


def test_inputs_must_fit_the_network() -> None:
    module, x = _zoo_ir("lenet5")
    net = FakeQuantNetwork(_quantized(module, 8, 8))
    assert net(torch.from_numpy(x[:3])).shape == (3, 10)  # any batch size
    with pytest.raises(InputError, match=r"inputs of shape \[N, 1, 28, 28\], got \[2, 1, 27, 28\]"):
        net(torch.zeros(2, 1, 27, 28))
    with pytest.raises(InputError, match="training labels must be 16 integers"):
        finetune(net, x, np.zeros(15, np.int64), epochs=1)
    with pytest.raises(InputError, match="training images must be a real array"):
        finetune(net, x[:, 0], np.zeros(16, np.int64), epochs=1)
