"""The quantize pass: what it writes (checked on text and by hand), mixed precision, errors, and
the integer reference against float for every zoo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from xdsl.dialects.builtin import StringAttr

from dopant.compiler.calibrate import calibrate
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.models import zoo
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import (
    ConstantOp,
    Conv2DOp,
    DequantizeOp,
    LinearOp,
    QnnOp,
    QuantizeOp,
    RequantizeOp,
)
from dopant.dialects.qnn.base import element, is_float
from dopant.runtime import reference
from dopant.support.errors import PipelineError

# conv 1->2 channels (1x1, weights 0.5 and -0.25, bias 0.1 and 0), relu, then fc 2->1.
NET = """
func.func @forward(%x: tensor<1x1x1x2xf32> {qnn.calib = #qnn.calib<minmax, 8 = [-1.0, 1.27], 4 = [-1.0, 1.27], 2 = [-1.0, 1.27]>}) -> tensor<1x1xf32> {
  %w = qnn.constant dense<[[[[0.5]]], [[[-0.25]]]]> : tensor<2x1x1x1xf32> at "conv.weight"
  %b = qnn.constant dense<[0.1, 0.0]> : tensor<2xf32> at "conv.bias"
  %c = qnn.conv2d %x, %w, %b stride [1, 1] pad [0, 0, 0, 0] dilation [1, 1] groups 1 act <relu> at "conv" {calib = #qnn.calib<minmax, 8 = [0.0, 2.55], 4 = [0.0, 1.5], 2 = [0.0, 0.3]>} : (tensor<1x1x1x2xf32>, tensor<2x1x1x1xf32>, tensor<2xf32>) -> tensor<1x2x1x2xf32>
  %f = qnn.reshape %c at "flatten" {calib = #qnn.calib<minmax, 8 = [0.0, 2.55], 4 = [0.0, 1.5], 2 = [0.0, 0.3]>} : tensor<1x2x1x2xf32> -> tensor<1x4xf32>
  %v = qnn.constant dense<[[1.0, 2.0, -1.0, 0.5]]> : tensor<1x4xf32> at "fc.weight"
  %y = qnn.linear %f, %v at "fc" {calib = #qnn.calib<minmax, 8 = [-6.35, 2.0], 4 = [-6.35, 2.0], 2 = [-6.35, 2.0]>} : (tensor<1x4xf32>, tensor<1x4xf32>) -> tensor<1x1xf32>
  func.return %y : tensor<1x1xf32>
}
"""


def _ops(module: object, kind: type) -> list:
    return [o for o in module.walk() if isinstance(o, kind)]  # type: ignore[attr-defined]


def test_quantize_writes_the_integer_network_by_hand() -> None:
    module = parse_ir(NET)
    run_pipeline(module, "quantize")
    (q,) = _ops(module, QuantizeOp)
    # Input [-1, 1.27] is signed: scale = 1.27 / 127 = 0.01.
    assert str(q.params.element_type) == "si8" and q.params.scales == pytest.approx([0.01])
    conv = _ops(module, Conv2DOp)[0]
    w = conv.weight.owner
    # Symmetric per channel: scale = |w| / 127, so both weights become +-127.
    assert w.numpy().ravel().tolist() == [127, -127]
    assert w.params.scales == pytest.approx([0.5 / 127, 0.25 / 127])
    # Bias 0.1 at S_x * S_w = 0.01 * 0.5 / 127 -> round(2540) = 2540.
    assert conv.bias.owner.numpy().tolist() == [2540, 0]
    rq = _ops(module, RequantizeOp)[0]
    # After the relu the output is unsigned: 2.55 / 255 = 0.01; the relu is the clamp.
    assert str(rq.out_params.element_type) == "ui8"
    assert rq.out_params.scales == pytest.approx([0.01])
    assert rq.path.data == "conv/requantize" and str(rq.act) == "#qnn.act<relu>"
    (dq,) = _ops(module, DequantizeOp)
    # The logits span [-6.35, 2]: signed, 6.35 / 127 = 0.05.
    assert dq.params.scales == pytest.approx([0.05])
    # No float arithmetic between the input quantize and the output dequantize.
    inner = [o for o in _ops(module, QnnOp) if not isinstance(o, QuantizeOp | DequantizeOp)]
    assert inner and all(not is_float(o.results[0]) for o in inner)
    assert parse_ir(ir_text(module)).is_structurally_equivalent(module)

    # x = [1.0, -0.5] -> q = [100, -50]. conv channel 0: 100 * 127 + 2540 = 15240 at S 0.5/12700
    # = 0.6 -> 60 at 0.01; -50 * 127 + 2540 < 0 -> relu 0. Channel 1: -127 * 100 < 0 -> 0;
    # +6350 -> 0.125 -> 12.5 -> 13 (half away from zero). fc: 60 + 0 - 0 + 0.5 * 13 over
    # [1, 2, -1, 0.5] with weights 127/2 steps... checked against the float result below.
    x = np.array([[[[1.0, -0.5]]]], np.float32)
    (got,) = reference.run(module, x)
    trace = reference.trace(module, x)
    assert trace["conv/requantize"].ravel().tolist() == [60, 0, 0, 13]
    # Float: conv [0.6, 0], [0, 0.125]; fc = 0.6 - 0 - 0 + 0.0625 = 0.6625 -> one 0.05 step.
    assert abs(float(got[0, 0]) - 0.6625) <= 0.05


def test_mixed_precision_overrides_and_first_last() -> None:
    module = parse_ir(NET)
    run_pipeline(module, 'quantize{weight-bits=4 act-bits=4 overrides="fc=w8a8"}')
    conv_w, fc_w = (o.weight.owner for o in _ops(module, Conv2DOp | LinearOp))
    assert str(conv_w.params.element_type) == "si4" and str(fc_w.params.element_type) == "si8"
    # fc reads its input at 8 bits, so the conv's output is stored at 8 bits (2.55 / 255) ...
    rq = _ops(module, RequantizeOp)[0]
    assert str(rq.out_params.element_type) == "ui8"
    assert rq.out_params.scales == pytest.approx([0.01])
    # ... while the conv reads the input at 4 bits: 1.27 / 7.
    assert _ops(module, QuantizeOp)[0].params.scales == pytest.approx([1.27 / 7])

    module = parse_ir(NET)
    run_pipeline(module, "quantize{weight-bits=2 act-bits=2 first-last-bits=8}")
    assert {str(o.weight.owner.params.element_type) for o in _ops(module, Conv2DOp | LinearOp)} == {
        "si8"
    }


# NET with a second conv "mid" between "conv" and the flatten: first, middle and last layers.
NET3 = NET.replace(
    '  %f = qnn.reshape %c at "flatten"',
    '  %m = qnn.constant dense<[[[[1.0]], [[0.5]]], [[[-0.5]], [[2.0]]]]> : tensor<2x2x1x1xf32> at "mid.weight"\n'
    '  %d = qnn.conv2d %c, %m stride [1, 1] pad [0, 0, 0, 0] dilation [1, 1] groups 1 act <relu> at "mid" {calib = #qnn.calib<minmax, 8 = [0.0, 3.0], 4 = [0.0, 2.0], 2 = [0.0, 1.0]>} : (tensor<1x2x1x2xf32>, tensor<2x2x1x1xf32>) -> tensor<1x2x1x2xf32>\n'
    '  %f = qnn.reshape %d at "flatten"',
)


def _with_bits(text: str, **bits: str) -> str:
    """`text` with `bits = #qnn.bits<...>` on the layers named (`conv="w4a8"`)."""
    for path, widths in bits.items():
        old = f'at "{path}" {{calib'
        assert text.count(old) == 1, path
        text = text.replace(old, f'at "{path}" {{bits = #qnn.bits<{widths}>, calib')
    return text


def _widths(module: object) -> dict[str, tuple[int, int]]:
    """Each integer layer's (weight bits, input activation bits), read off its types."""
    return {
        o.path.data: (element(o.weight).width.data, element(o.input).width.data)
        for o in _ops(module, Conv2DOp | LinearOp)
    }


def _quantized(text: str, pipeline: str) -> str:
    module = parse_ir(text)
    run_pipeline(module, pipeline)
    return ir_text(module)


def test_bits_attributes_quantize_as_the_overrides_option_does() -> None:
    by_option = _quantized(NET3, 'quantize{weight-bits=4 act-bits=4 overrides="fc=w8a8","mid=a8"}')
    by_attribute = _quantized(
        _with_bits(NET3, mid="a8", fc="w8a8"), "quantize{weight-bits=4 act-bits=4}"
    )
    by_set_bits = _quantized(
        NET3, 'set-bits{layers="fc=w8a8,mid=a8"},quantize{weight-bits=4 act-bits=4}'
    )
    assert by_attribute == by_option == by_set_bits
    assert by_option != _quantized(NET3, "quantize{weight-bits=4 act-bits=4}")
    assert _widths(parse_ir(by_option)) == {"conv": (4, 4), "mid": (4, 8), "fc": (8, 8)}
    # The widths are in the types now: no layer keeps its attribute, and the module records
    # the choices in program order, as options that redo the same from float IR.
    assert "#qnn.bits" not in by_option
    record = parse_ir(by_option).attributes["qnn.quantized"].data  # type: ignore[attr-defined]
    assert record.endswith('first-last-bits=0 output-bits=8 overrides="mid=a8","fc=w8a8"')


def test_bits_precedence_defaults_then_first_last_then_attribute_then_option() -> None:
    options = "weight-bits=2 act-bits=2 first-last-bits=8"
    attributed = _with_bits(NET3, conv="w4", mid="a4")
    cases = [
        # first-last-bits over the defaults for the first and last layer.
        (NET3, "", {"conv": (8, 8), "mid": (2, 2), "fc": (8, 8)}),
        # An attribute over both, width by width: conv keeps the first-last activation width.
        (attributed, "", {"conv": (4, 8), "mid": (2, 4), "fc": (8, 8)}),
        # The option writes its widths over the attributes; the widths it leaves out stay.
        (
            attributed,
            ' overrides="conv=w2","mid=w8"',
            {"conv": (2, 8), "mid": (8, 4), "fc": (8, 8)},
        ),
    ]
    for text, extra, expected in cases:
        quantized = _quantized(text, f"quantize{{{options}{extra}}}")
        assert _widths(parse_ir(quantized)) == expected, extra
        # The record on the module redoes the same quantization from IR without attributes.
        module = parse_ir(quantized)
        record = module.attributes["qnn.quantized"]
        assert _quantized(NET3, f"quantize{{{record.data}}}") == quantized  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        (
            'set-bits{layers="conv9=w4"}',
            "pass 'set-bits' failed: override 'conv9=w4' names no conv or linear layer; the "
            "layers are: conv, fc.",
        ),
        ('set-bits{layers="conv=8"}', "override 'conv=8' is not of the form path=wXaY"),
        ('set-bits{layers="conv=a3"}', "the activation bits of 'conv=a3'=3 is not supported"),
        (
            'quantize,set-bits{layers="fc=w4"}',
            'qnn.linear at "fc" is an integer layer, whose widths are in its types; set bits on '
            "float IR, before quantize.",
        ),
    ],
)
def test_bad_bit_plans_are_refused(pipeline: str, message: str) -> None:
    with pytest.raises(PipelineError) as error:
        run_pipeline(parse_ir(NET), pipeline)
    assert message in str(error.value)


def test_bits_that_are_no_bits_attribute_are_refused_in_unverified_ir() -> None:
    module = parse_ir(NET)
    _ops(module, Conv2DOp)[0].attributes["bits"] = StringAttr("w8")  # built in Python
    with pytest.raises(PipelineError) as error:
        run_pipeline(module, "quantize")
    assert 'qnn.conv2d at "conv" has `bits = "w8"`; write the widths as #qnn.bits<w8a8>.' in str(
        error.value
    )


@pytest.mark.parametrize(
    ("text", "pipeline", "message"),
    [
        (NET, "quantize{weight-bits=3}", "weight-bits=3 is not supported; use 2, 4 or 8 bits"),
        (NET, 'quantize{rounding="up"}', "rounding 'up' is not known; use one of gemmlowp, single"),
        (
            NET,
            'quantize{overrides="conv9=w4"}',
            "override 'conv9=w4' names no conv or linear layer; the layers are: conv, fc",
        ),
        (NET, 'quantize{overrides="conv:w4"}', "override 'conv:w4' is not of the form path=wXaY"),
        (NET, 'quantize{overrides="conv=w5"}', "the weight bits of 'conv=w5'=5 is not supported"),
        (
            NET.replace(
                "{calib = #qnn.calib<minmax, 8 = [0.0, 2.55], 4 = [0.0, 1.5], 2 = [0.0, 0.3]>} : (",
                ": (",
            ),
            "quantize",
            '1 value(s) have no calibrated range: "conv"; run `dopant calibrate`',
        ),
    ],
)
def test_bad_quantize_requests_are_refused(text: str, pipeline: str, message: str) -> None:
    with pytest.raises(PipelineError) as error:
        run_pipeline(parse_ir(text), pipeline)
    assert message in str(error.value)


def test_quantize_needs_folded_batch_norms_and_float_ir() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(2))
    module = import_model(model.eval(), torch.randn(1, 1, 5, 5))
    calibrate(module, np.random.default_rng(0).standard_normal((4, 1, 5, 5)).astype(np.float32))
    with pytest.raises(PipelineError, match=r'batch norms remain \("2"\); run fold-batchnorm'):
        run_pipeline(module.clone(), "quantize")
    quantized = parse_ir(NET)
    run_pipeline(quantized, "quantize")
    with pytest.raises(PipelineError, match="the IR is already integer"):
        run_pipeline(quantized, "quantize")


def _snr_db(reference_values: np.ndarray, approx: np.ndarray) -> float:
    noise = float(np.sum((reference_values - approx) ** 2))
    return 10 * np.log10(float(np.sum(reference_values**2)) / max(noise, 1e-30))


@pytest.mark.parametrize("name", zoo.names())
def test_every_zoo_model_quantizes_at_8_4_and_mixed_bits(name: str) -> None:
    entry = zoo.get(name)
    model = entry.build()
    rng = np.random.default_rng(0)
    samples = 4 if name == "resnet18" else 32
    x = rng.standard_normal((samples, *entry.input_shape[1:])).astype(np.float32)
    module = import_model(model, torch.from_numpy(x[:1]))
    run_pipeline(module, "fold-batchnorm,fuse-activation")
    calibrate(module, x)
    run_pipeline(module, f"set-batch{{size={samples}}}")
    (expected,) = reference.run(module, x)
    # Output signal-to-noise against float (dB). Measured on these random-weight models:
    # W8A8 33-39, W4A4 6-14, W4A8 with 8-bit first/last layers 11-25; the floors leave margin.
    floors = {
        "": 25.0,
        "{weight-bits=4 act-bits=4}": 4.0,
        "{weight-bits=4 act-bits=8 first-last-bits=8}": 8.0,
    }
    for options, floor_db in floors.items():
        q = module.clone()
        run_pipeline(q, "quantize" + options)
        (got,) = reference.run(q, x)
        assert got.shape == expected.shape and np.all(np.isfinite(got))
        assert _snr_db(expected, got) > floor_db, options


def test_constants_of_a_quantized_network_are_integers() -> None:
    module = parse_ir(NET)
    run_pipeline(module, "quantize{weight-bits=4}")
    for c in _ops(module, ConstantOp):
        assert not is_float(c.result) and c.params is not None


class PoolThenRelu6(torch.nn.Module):
    """A ReLU6 that cannot fuse (it follows a pool) and really clips (inputs reach past 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.act = torch.nn.ReLU6()
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.pool(self.conv(x))).flatten(1))


def test_a_standalone_clipping_relu6_becomes_a_requantize_to_its_own_range() -> None:
    model = PoolThenRelu6().eval()
    with torch.no_grad():
        model.conv.weight.mul_(20.0)  # activations up to ~20: the clamp at 6 matters
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    module = import_model(model, torch.from_numpy(x[:1]))
    run_pipeline(module, "fold-batchnorm,fuse-activation")
    calibrate(module, x)
    q = module.clone()
    run_pipeline(q, "quantize")
    (clamp,) = [o for o in _ops(q, RequantizeOp) if o.path.data == "act"]
    # The clamp reads the pool's signed range and writes its own unsigned [0, 6] range.
    assert str(clamp.in_params.element_type) == "si8"
    assert str(clamp.out_params.element_type) == "ui8"
    assert clamp.out_params.scales == pytest.approx([6.0 / 255])
    run_pipeline(module, "set-batch{size=64}")
    run_pipeline(q, "set-batch{size=64}")
    (want,), (got,) = reference.run(module, x), reference.run(q, x)
    assert _snr_db(want, got) > 30.0
