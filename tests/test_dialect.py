"""The qnn dialect: every op round-trips through text, and verifiers reject bad IR in sentences."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.utils.exceptions import VerifyException

from dopant.compiler.irio import ir_text, parse_ir
from dopant.dialects.context import make_context
from dopant.dialects.qnn import (
    ActivationAttr,
    BitsAttr,
    ConstantOp,
    QuantParamsAttr,
)
from dopant.dialects.qnn.attrs import float_text
from dopant.support.errors import IRError

F8 = "tensor<1x4x8x8xf32>"
ALL_OPS = f"""
func.func @forward(%x: tensor<1x3x8x8xf32>) -> tensor<1x10xf32> {{
  %w = qnn.constant dense<0.5> : tensor<4x3x3x3xf32> at "conv.weight"
  %b = qnn.constant dense<0.0> : tensor<4xf32>
  %s = qnn.constant dense<1.0> : tensor<4xf32>
  %c = qnn.conv2d %x, %w, %b stride [1, 1] pad [1, 1, 0, 2] dilation [1, 1] groups 1 act <relu> at "conv" : (tensor<1x3x8x8xf32>, tensor<4x3x3x3xf32>, tensor<4xf32>) -> {F8}
  %bn = qnn.batch_norm %c, %s, %b, %b, %s eps 1.0e-05 at "bn" : ({F8}, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> {F8}
  %r = qnn.relu %bn at "relu" : {F8}
  %k = qnn.clamp %r min -1.5 max 6.0 at "act" : {F8}
  %a = qnn.add %k, %r act <clamp 0.0, 6.0> at "add" : ({F8}, {F8}) -> {F8}
  %m = qnn.max_pool2d %a kernel [2, 2] stride [2, 2] pad [0, 1, 0, 1] dilation [1, 1] zero_pad ceil_mode at "mp" : {F8} -> tensor<1x4x4x4xf32>
  %v = qnn.avg_pool2d %m kernel [3, 3] stride [1, 1] pad [1, 1, 1, 1] count_include_pad at "ap" : tensor<1x4x4x4xf32> -> tensor<1x4x4x4xf32>
  %cc = qnn.concat %v, %v axis 1 at "cat" : (tensor<1x4x4x4xf32>, tensor<1x4x4x4xf32>) -> tensor<1x8x4x4xf32>
  %g = qnn.global_avg_pool %cc at "pool" : tensor<1x8x4x4xf32> -> tensor<1x8x1x1xf32>
  %f = qnn.reshape %g at "flatten" : tensor<1x8x1x1xf32> -> tensor<1x8xf32>
  %q = qnn.quantize %f to <si8, scale = [0.1], zp = [0]> at "q" : tensor<1x8xf32> -> tensor<1x8xsi8>
  %rq = qnn.requantize %q from <si8, scale = [0.1], zp = [0]> to <ui4, axis = 1, scale = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0e-05], zp = [0, 0, 0, 0, 0, 0, 0, 3]> rounding "gemmlowp" act <relu> at "rq" : tensor<1x8xsi8> -> tensor<1x8xui4>
  %dq = qnn.dequantize %q from <si8, scale = [0.1], zp = [0]> at "dq" : tensor<1x8xsi8> -> tensor<1x8xf32>
  %lw = qnn.constant dense<0.1> : tensor<10x8xf32>
  %l = qnn.linear %dq, %lw at "fc" : (tensor<1x8xf32>, tensor<10x8xf32>) -> tensor<1x10xf32>
  func.return %l : tensor<1x10xf32>
}}
"""


def test_every_op_round_trips_through_text() -> None:
    module = parse_ir(ALL_OPS, "all.mlir")
    names = {op.name for op in module.walk() if op.name.startswith("qnn.")}
    # Every op of the dialect appears in the sample, so the round trip covers them all.
    assert names == {op.name for op in make_context().get_dialect("qnn").operations}
    text = ir_text(module)
    again = parse_ir(text)
    assert again.is_structurally_equivalent(module)
    assert ir_text(again) == text


def test_generic_form_round_trips() -> None:
    module = parse_ir(ALL_OPS)
    generic = ir_text(module, generic=True)
    assert '"qnn.conv2d"' in generic
    assert parse_ir(generic).is_structurally_equivalent(module)


def test_floats_print_as_mlir_literals_that_read_back_exactly() -> None:
    for x in (1e-05, 0.1, 1 / 3, 6.0, 2.5e-12, 12345.678):
        text = float_text(x)
        assert "." in text and float(text) == x


def test_large_constants_are_built_from_bytes_and_read_back() -> None:
    w = np.random.default_rng(0).standard_normal((64, 32, 3, 3)).astype(np.float32)
    op = ConstantOp.of(w, "layer.weight")
    assert np.array_equal(op.numpy(), w)
    assert op.result.type == op.value.type


def _conv(
    stride: str = "[1, 1]",
    pad: str = "[1, 1, 1, 1]",
    groups: int = 1,
    w: str = "4x3x3x3",
    out: str = "1x4x8x8",
    bias: str = "",
) -> str:
    bias_operand, bias_type = (", %b", ", tensor<4xf32>") if bias else ("", "")
    return f"""
func.func @forward(%x: tensor<1x3x8x8xf32>) -> tensor<{out}xf32> {{
  %w = qnn.constant dense<0.5> : tensor<{w}xf32>
  %b = qnn.constant dense<0.0> : tensor<{bias or 4}xf32>
  %c = qnn.conv2d %x, %w{bias_operand} stride {stride} pad {pad} dilation [1, 1] groups {groups} at "layer1.conv" : (tensor<1x3x8x8xf32>, tensor<{w}xf32>{bias_type.replace("4", str(bias or 4))}) -> tensor<{out}xf32>
  func.return %c : tensor<{out}xf32>
}}"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_conv(out="1x4x7x8"), "the result shape should be [1, 4, 8, 8] but is [1, 4, 7, 8]"),
        (_conv(stride="[0, 1]"), "strides values must be at least 1, got [0, 1]"),
        (_conv(pad="[1, 1]"), "padding needs 4 values, got 2: [1, 1]"),
        (_conv(groups=2), "groups=2 must divide the 3 input and 4 output channels"),
        (_conv(w="4x2x3x3"), "the weight takes 2 channels per group"),
        (_conv(bias="5"), "the bias must have shape [4], got [5]"),
    ],
)
def test_conv_verifier_names_the_op_and_the_rule(text: str, message: str) -> None:
    with pytest.raises(IRError) as error:
        parse_ir(text, "bad.mlir")
    assert 'qnn.conv2d at "layer1.conv"' in str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '%y = qnn.linear %x, %w at "fc" : (tensor<2x8xf32>, tensor<3x7xf32>) -> tensor<2x3xf32>',
            "the input has 8 features but the weight expects 7",
        ),
        (
            '%y = qnn.add %x, %w at "add" : (tensor<2x8xf32>, tensor<3x7xf32>) -> tensor<2x8xf32>',
            "both operands need the same shape",
        ),
        (
            '%y = qnn.reshape %x at "r" : tensor<2x8xf32> -> tensor<3x5xf32>',
            "cannot reshape [2, 8] (16 elements) to [3, 5] (15 elements)",
        ),
        (
            '%y = qnn.concat %x, %w axis 1 at "cat" : (tensor<2x8xf32>, tensor<3x7xf32>) -> tensor<2x15xf32>',
            "input 1 has shape [3, 7], which differs from [2, 8] outside axis 1",
        ),
        (
            '%y = qnn.clamp %x min 6.0 max 0.0 at "c" : tensor<2x8xf32>',
            "the bounds [6.0, 0.0] must be finite with min below max",
        ),
        (
            '%y = qnn.quantize %x to <si8, axis = 1, scale = [0.1, 0.2], zp = [0, 0]> at "q" : tensor<2x8xf32> -> tensor<2x8xsi8>',
            "the parameters give 2 scales for the 8 channels of axis 1",
        ),
        (
            '%y = qnn.quantize %x to <si8, scale = [0.1], zp = [0]> at "q" : tensor<2x8xf32> -> tensor<2x8xui8>',
            "the result must have element type si8 to match its quantization parameters",
        ),
    ],
)
def test_op_verifiers(line: str, message: str) -> None:
    text = f"""
func.func @forward(%x: tensor<2x8xf32>) {{
  %w = qnn.constant dense<0.5> : tensor<3x7xf32>
  {line}
  func.return
}}"""
    with pytest.raises(IRError, match="IR does not verify") as error:
        parse_ir(text)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: QuantParamsAttr([0.1], [0], 9, True, -1), "bit width 9 is not supported"),
        (lambda: QuantParamsAttr([0.1], [200], 8, True, -1), "Zero point 200 lies outside"),
        (lambda: QuantParamsAttr([0.1, 0.2], [0], 8, True, 0), "2 scales but 1 zero points"),
        (lambda: QuantParamsAttr([0.1, 0.2], [0, 0], 8, True, -1), "exactly one scale"),
        (lambda: QuantParamsAttr([-0.1], [0], 8, True, -1), "not a positive finite number"),
        (lambda: ActivationAttr.clamp(6.0, 1.0), "bounds [6.0, 1.0] are empty"),
        (lambda: ActivationAttr("gelu", 0.0, 1.0), "Activation 'gelu' is not known"),
        (
            lambda: BitsAttr.get(5, 8),
            "Weight bit width 5 is not supported for a layer; use 2, 4 or 8.",
        ),
        (lambda: BitsAttr.get(8, 3), "Activation bit width 3 is not supported for a layer"),
        (lambda: BitsAttr.get(0, 0), "needs a weight width, an activation width or both"),
    ],
)
def test_attribute_verifiers(make: object, message: str) -> None:
    with pytest.raises(VerifyException, match=message.replace("[", r"\[").replace("]", r"\]")):
        make()  # type: ignore[operator]


def test_qparams_properties() -> None:
    p = QuantParamsAttr.per_tensor(0.5, 3, 4, False)
    assert (p.qmin, p.qmax, str(p.element_type)) == (0, 15, "ui4")
    s = QuantParamsAttr([0.1, 0.2], [0, 0], 2, True, 0)
    assert (s.qmin, s.qmax, s.is_per_channel) == (-2, 1, True)


def _linear_with(attributes: str, integer: bool = False) -> str:
    """A linear layer "fc" carrying `attributes`, on f32 or (`integer`) on si8 operands."""
    x, w, y = ("si8", "si8", "si32") if integer else ("f32", "f32", "f32")
    return f"""
func.func @forward(%x: tensor<2x8x{x}>) {{
  %w = qnn.constant dense<1> : tensor<3x8x{w}>
  %y = qnn.linear %x, %w at "fc" {attributes} : (tensor<2x8x{x}>, tensor<3x8x{w}>) -> tensor<2x3x{y}>
  func.return
}}"""


@pytest.mark.parametrize(("text", "weight", "act"), [("w8a4", 8, 4), ("w2", 2, 0), ("a4", 0, 4)])
def test_bits_attribute_round_trips_through_text(text: str, weight: int, act: int) -> None:
    module = parse_ir(_linear_with(f"{{bits = #qnn.bits<{text}>}}"))
    (layer,) = [op for op in module.walk() if op.name == "qnn.linear"]
    assert layer.attributes["bits"] == BitsAttr.get(weight, act)
    assert str(BitsAttr.get(weight, act)) == f"#qnn.bits<{text}>"
    printed = ir_text(module)
    assert f'at "fc" {{bits = #qnn.bits<{text}>}} :' in printed
    assert parse_ir(printed).is_structurally_equivalent(module)
    assert parse_ir(ir_text(module, generic=True)).is_structurally_equivalent(module)


@pytest.mark.parametrize(
    ("attributes", "integer", "message"),
    [
        (
            "{bits = #qnn.bits<a8w8>}",
            False,
            "bits.mlir:4:52: expected the widths of a layer, weights first: w8a8, w4 or a4",
        ),
        (
            "{bits = #qnn.bits<w8a3>}",
            False,
            "bits.mlir:4:52: Activation bit width 3 is not supported for a layer; use 2, 4 or 8.",
        ),
        (
            '{bits = "w8"}',
            False,
            'qnn.linear at "fc": the `bits` attribute must be a #qnn.bits such as '
            '#qnn.bits<w8a8>, got "w8".',
        ),
        (
            "{bits = #qnn.bits<w8>}",
            True,
            'qnn.linear at "fc": an integer layer\'s widths are in its types, so it takes no '
            "`bits` attribute; set widths on the float layer, before quantize.",
        ),
    ],
)
def test_bad_bits_attributes_are_refused(attributes: str, integer: bool, message: str) -> None:
    # Text errors point at the widths inside the brackets: line 4, column 52.
    with pytest.raises(IRError) as error:
        parse_ir(_linear_with(attributes, integer), "bits.mlir")
    assert message in str(error.value)


def test_parse_error_names_file_line_and_column() -> None:
    text = "func.func @forward(%x: tensor<2xf32>) {\n  %y = qnn.relu %x : tensor<2xf32>\n}\n"
    # Column 20 is the ':' where the parser wanted the `at "path"` of the op.
    with pytest.raises(IRError, match=r"^bad\.mlir:2:20: Expected 'at'$"):
        parse_ir(text, "bad.mlir")


def test_unknown_op_is_a_parse_error() -> None:
    with pytest.raises(IRError, match=r"^x\.mlir:1:11: Operation qnn\.nope is not registered$"):
        parse_ir('"qnn.nope"() : () -> ()', "x.mlir")


def test_window_out_follows_torch_including_ceil_mode() -> None:
    from dopant.dialects.shapes import window_out

    # conv 3x3, pad 1, stride 2 on 28: floor((28 + 2 - 3) / 2) + 1 = 14
    assert window_out(28, 3, 2, 1, 1) == 14
    # ceil: 8 + 0 + 1 - 2 = 7 -> ceil(7 / 2) + 1 = 5, but window 5 would start at 8, in the
    # bottom padding, so torch drops it: 4.
    assert window_out(8, 2, 2, 0, 1, ceil_mode=True) == 4
    # ceil keeps a partial window that starts inside the input: 7 - 2 = 5 -> ceil(2.5) + 1 = 4
    assert window_out(7, 2, 2, 0, 0, ceil_mode=True) == 4
    assert window_out(7, 2, 2, 0, 0) == 3
    assert window_out(2, 5, 1, 0, 0) == 0  # kernel larger than the input
