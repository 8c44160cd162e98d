"""The reference interpreter on small `.mlir` modules: float ops against torch, integer ops
against hand arithmetic and exact integer references, input validation messages, and traces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from xdsl.dialects.builtin import ModuleOp
from xdsl.parser import Parser
from xdsl.utils.exceptions import VerifyException

from dopant.dialects.context import make_context
from dopant.runtime.reference import run, trace
from dopant.support.errors import ExecutionError, InputError

RNG = np.random.default_rng(0)


def parse(text: str) -> ModuleOp:
    module = Parser(make_context(), text, "test.mlir").parse_module()
    module.verify()
    return module


def ty(shape: tuple[int, ...], elem: str = "f32") -> str:
    return f"tensor<{'x'.join(map(str, shape))}x{elem}>"


def const(name: str, array: np.ndarray, elem: str = "f32") -> str:
    """A `qnn.constant` line holding `array` exactly, as an MLIR hex literal."""
    return f'%{name} = qnn.constant dense<"0x{array.tobytes().hex()}"> : {ty(array.shape, elem)}'


def func(args: str, result: str, body: list[str], ret: str = "%y") -> str:
    lines = "\n  ".join(body)
    return (
        f"func.func @forward({args}) -> {result} {{\n  {lines}\n  func.return {ret} : {result}\n}}"
    )


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def assert_close(got: np.ndarray, ref: torch.Tensor) -> None:
    expected = ref.detach().numpy()
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_small_cnn_matches_torch_end_to_end_and_per_layer() -> None:
    x = randn(2, 3, 9, 9)
    w1, b1 = randn(8, 3, 3, 3), randn(8)
    gamma, beta, mean = randn(8), randn(8), randn(8)
    var = np.abs(randn(8)) + 0.5
    wd = randn(8, 1, 3, 3)
    fc, fb = randn(5, 16), randn(5)
    a, c1, p, d = ty((2, 8, 9, 9)), ty((2, 8, 5, 5)), ty((2, 16, 5, 5)), ty((2, 16, 1, 1))
    text = func(
        f"%x: {ty((2, 3, 9, 9))}",
        ty((2, 5)),
        [
            const("w1", w1),
            const("b1", b1),
            const("g", gamma),
            const("be", beta),
            const("m", mean),
            const("v", var),
            const("wd", wd),
            const("fc", fc),
            const("fb", fb),
            f"%c = qnn.conv2d %x, %w1, %b1 stride [1, 1] pad [1, 1, 1, 1] dilation [1, 1] "
            f'groups 1 at "conv1" : ({ty((2, 3, 9, 9))}, {ty(w1.shape)}, {ty((8,))}) -> {a}',
            f'%n = qnn.batch_norm %c, %g, %be, %m, %v eps 1.0e-05 at "bn1" : '
            f"({a}, {ty((8,))}, {ty((8,))}, {ty((8,))}, {ty((8,))}) -> {a}",
            f'%r = qnn.relu %n at "relu" : {a}',
            f"%mp = qnn.max_pool2d %r kernel [2, 2] stride [2, 2] pad [0, 0, 0, 0] "
            f'dilation [1, 1] ceil_mode at "pool" : {a} -> {c1}',
            f"%dw = qnn.conv2d %mp, %wd stride [1, 1] pad [1, 1, 1, 1] dilation [1, 1] groups 8 "
            f'act <clamp 0.0, 6.0> at "dw" : ({c1}, {ty(wd.shape)}) -> {c1}',
            f'%s = qnn.add %dw, %mp act <relu> at "add" : ({c1}, {c1}) -> {c1}',
            f'%ap = qnn.avg_pool2d %s kernel [3, 3] stride [1, 1] pad [1, 1, 1, 1] at "avg" : '
            f"{c1} -> {c1}",
            f'%cat = qnn.concat %ap, %mp axis 1 at "cat" : ({c1}, {c1}) -> {p}',
            f'%gp = qnn.global_avg_pool %cat at "gap" : {p} -> {d}',
            f'%f = qnn.reshape %gp at "flatten" : {d} -> {ty((2, 16))}',
            f'%y = qnn.linear %f, %fc, %fb at "fc" : ({ty((2, 16))}, {ty(fc.shape)}, '
            f"{ty((5,))}) -> {ty((2, 5))}",
        ],
    )
    module = parse(text)
    ref = {"conv1": F.conv2d(t(x), t(w1), t(b1), 1, 1)}
    ref["bn1"] = F.batch_norm(ref["conv1"], t(mean), t(var), t(gamma), t(beta), eps=1e-5)
    ref["relu"] = F.relu(ref["bn1"])
    ref["pool"] = F.max_pool2d(ref["relu"], 2, 2, ceil_mode=True)
    ref["dw"] = F.relu6(F.conv2d(ref["pool"], t(wd), None, 1, 1, 1, 8))
    ref["add"] = F.relu(ref["dw"] + ref["pool"])
    ref["avg"] = F.avg_pool2d(ref["add"], 3, 1, 1, count_include_pad=False)
    ref["cat"] = torch.cat([ref["avg"], ref["pool"]], 1)
    ref["gap"] = F.adaptive_avg_pool2d(ref["cat"], 1)
    ref["flatten"] = ref["gap"].flatten(1)
    ref["fc"] = F.linear(ref["flatten"], t(fc), t(fb))
    (y,) = run(module, x)
    assert_close(y, ref["fc"])
    values = trace(module, x)
    assert list(values) == list(ref)  # every qnn op but the constants, in execution order
    for path, value in values.items():
        assert_close(value, ref[path])


def test_conv_and_pools_read_each_property_in_its_place() -> None:
    # Non-square strides, kernels and dilations and asymmetric pads catch h/w or order swaps.
    x, w = randn(1, 4, 11, 10), randn(6, 2, 3, 2)
    conv_out, mp_out, ap_out = ty((1, 6, 5, 10)), ty((1, 6, 2, 11)), ty((1, 6, 3, 11))
    text = func(
        f"%x: {ty((1, 4, 11, 10))}",
        ap_out,
        [
            const("w", w),
            f"%c = qnn.conv2d %x, %w stride [2, 1] pad [0, 1, 2, 0] dilation [1, 2] groups 2 "
            f'at "conv" : ({ty((1, 4, 11, 10))}, {ty(w.shape)}) -> {conv_out}',
            f"%m = qnn.max_pool2d %c kernel [3, 2] stride [2, 1] pad [1, 1, 1, 1] "
            f'dilation [2, 1] ceil_mode at "mp" : {conv_out} -> {mp_out}',
            f"%y = qnn.avg_pool2d %m kernel [2, 3] stride [1, 1] pad [1, 1, 1, 1] "
            f'count_include_pad ceil_mode at "ap" : {mp_out} -> {ap_out}',
        ],
    )
    conv = F.conv2d(F.pad(t(x), (2, 0, 0, 1)), t(w), None, (2, 1), 0, (1, 2), 2)
    mp = F.max_pool2d(conv, (3, 2), (2, 1), (1, 1), (2, 1), ceil_mode=True)
    ap = F.avg_pool2d(mp, (2, 3), 1, 1, ceil_mode=True, count_include_pad=True)
    values = trace(parse(text), x)
    for path, ref in (("conv", conv), ("mp", mp), ("ap", ap)):
        assert_close(values[path], ref)


def test_clamp_relu_and_batch_norm_of_rank_2() -> None:
    x = randn(3, 4) * 4
    gamma, beta, mean = randn(4), randn(4), randn(4)
    var = np.abs(randn(4)) + 0.5
    s = ty((3, 4))
    v = ty((4,))
    text = func(
        f"%x: {s}",
        s,
        [
            const("g", gamma),
            const("b", beta),
            const("m", mean),
            const("v", var),
            f'%n = qnn.batch_norm %x, %g, %b, %m, %v eps 1.0e-03 at "bn" : '
            f"({s}, {v}, {v}, {v}, {v}) -> {s}",
            f'%k = qnn.clamp %n min -0.5 max 1.5 at "clamp" : {s}',
            f'%y = qnn.relu %k at "relu" : {s}',
        ],
    )
    bn = F.batch_norm(t(x), t(mean), t(var), t(gamma), t(beta), eps=1e-3)
    (y,) = run(parse(text), x)
    assert_close(y, torch.relu(torch.clamp(bn, -0.5, 1.5)))


QPARAMS_IN = "<si8, scale = [0.5], zp = [0]>"


def _requant_module(rounding: str) -> ModuleOp:
    out = "<ui8, scale = [2.0], zp = [128]>"
    text = func(
        f"%x: {ty((1, 6))}",
        ty((1, 6)),
        [
            f'%q = qnn.quantize %x to {QPARAMS_IN} at "q" : {ty((1, 6))} -> {ty((1, 6), "si8")}',
            f'%r = qnn.requantize %q from {QPARAMS_IN} to {out} rounding "{rounding}" at "rq" : '
            f"{ty((1, 6), 'si8')} -> {ty((1, 6), 'ui8')}",
            f'%y = qnn.dequantize %r from {out} at "dq" : {ty((1, 6), "ui8")} -> {ty((1, 6))}',
        ],
    )
    return parse(text)


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        # quantize (x / 0.5, half to even, clamp to [-128, 127]): 2.5 -> 5, -3 -> -6,
        # 1.25 -> 2.5 -> 2, 1.75 -> 3.5 -> 4, 100 -> 200 -> 127, -0.5 -> -1.
        # requantize by M = 0.5 / 2.0 = 0.25 = (2^30, shift -1), then + 128:
        # gemmlowp: 5 -> SRDHM 2.5 -> 3 -> RDBPOT 1.5 -> 2; -6 -> -3 -> -1.5 -> -2; 2 -> 1 ->
        # 0.5 -> 1; 4 -> 2 -> 1; 127 -> 63.5 -> 64 -> 32; -1 -> -0.5 -> 0 -> 0.
        ("gemmlowp", [130, 126, 129, 129, 160, 128]),
        # single: (q * 2^30 + 2^31) >> 32 = floor(q / 4 + 1/2): 5 -> 1, -6 -> -1, 2 -> 1,
        # 4 -> 1, 127 -> 32, -1 -> 0.
        ("single", [129, 127, 129, 129, 160, 128]),
    ],
)
def test_quantize_requantize_dequantize_by_hand(rounding: str, expected: list[int]) -> None:
    x = np.array([[2.5, -3.0, 1.25, 1.75, 100.0, -0.5]], np.float32)
    values = trace(_requant_module(rounding), x)
    assert values["q"].dtype == np.int8 and values["q"].tolist() == [[5, -6, 2, 4, 127, -1]]
    assert values["rq"].dtype == np.uint8 and values["rq"].tolist() == [expected]
    dq = (np.array(expected) - 128) * 2.0
    np.testing.assert_array_equal(values["dq"], dq.astype(np.float32).reshape(1, 6))


def test_per_channel_requantize_with_relu_is_within_one_step_of_float64() -> None:
    acc = RNG.integers(-30000, 30000, size=(2, 3, 4, 4)).astype(np.int32)
    scales = [0.0004, 0.001, 0.00025]
    a, q = ty((2, 3, 4, 4), "si32"), ty((2, 3, 4, 4), "si8")
    text = func(
        f"%x: {a}",
        q,
        [
            f"%y = qnn.requantize %x from <si32, axis = 1, scale = {scales}, zp = [0, 0, 0]> "
            f'to <si8, scale = [0.05], zp = [-20]> rounding "gemmlowp" act <relu> at "rq" : '
            f"{a} -> {q}",
        ],
    )
    (y,) = run(parse(text), acc)
    real = acc * np.array(scales).reshape(1, 3, 1, 1) / 0.05
    # relu keeps real values >= 0, i.e. q >= zp = -20.
    expected = np.clip(np.round(real) - 20, -20, 127)
    assert y.dtype == np.int8
    assert np.abs(y.astype(np.int64) - expected).max() <= 1
    assert y.min() == -20 and y.max() == 127


def _int_conv_module(bias: np.ndarray, w: np.ndarray, act: str = "") -> ModuleOp:
    x_t, y_t = ty((2, 6, 7, 7), "si8"), ty((2, 4, 4, 4), "si32")
    text = func(
        f"%x: {x_t}",
        y_t,
        [
            const("w", w, "si8"),
            const("b", bias, "si32"),
            f"%y = qnn.conv2d %x, %w, %b stride [2, 2] pad [1, 1, 1, 1] dilation [1, 1] "
            f'groups 2 {act}at "conv" : ({x_t}, {ty(w.shape, "si8")}, {ty((4,), "si32")}) '
            f"-> {y_t}",
        ],
    )
    return parse(text)


def test_integer_conv_is_the_exact_integer_sum_plus_bias() -> None:
    bias = np.array([1000, -1000, 0, 123456], np.int32)
    w = RNG.integers(-128, 128, size=(4, 3, 3, 3)).astype(np.int8)
    module = _int_conv_module(bias, w)
    x = RNG.integers(-128, 128, size=(2, 6, 7, 7)).astype(np.int8)
    (y,) = run(module, x)
    # float64 torch conv of int8 values is exact (|sum| < 27 * 128 * 128 < 2^53).
    ref = F.conv2d(
        t(x.astype(np.float64)), t(w.astype(np.float64)), t(bias.astype(np.float64)), 2, 1, 1, 2
    )
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, ref.numpy().astype(np.int32))


def test_integer_overflow_names_the_op_and_carries_no_module_dump() -> None:
    # Channel 0: at least 127 * 1 * 12 (the corner taps) on top of a bias of 2^31 - 1.
    module = _int_conv_module(
        np.array([2**31 - 1, 0, 0, 0], np.int32), np.ones((4, 3, 3, 3), np.int8)
    )
    x = np.full((2, 6, 7, 7), 127, np.int8)
    with pytest.raises(ExecutionError) as info:
        run(module, x)
    message = str(info.value)
    assert message.startswith('qnn.conv2d at "conv": the integer result spans [')
    assert message.endswith(
        "which does not fit si32 [-2147483648, 2147483647]; rescale with qnn.requantize "
        "before it overflows."
    )
    assert not getattr(info.value, "__notes__", None)


def test_integer_linear_relu_and_pools_follow_the_exact_integer_contract() -> None:
    x = np.array([[3, -4, 5], [-1, 2, -7]], np.int8)
    w = np.array([[1, 2, 3], [-2, 0, 1]], np.int8)
    h, a, p = ty((2, 3), "si8"), ty((1, 1, 2, 2), "si32"), ty((1, 1, 1, 1), "si32")
    text = func(
        f"%x: {h}",
        p,
        [
            const("w", w, "si8"),
            f'%l = qnn.linear %x, %w at "fc" : ({h}, {h}) -> {ty((2, 2), "si32")}',
            f'%r = qnn.reshape %l at "view" : {ty((2, 2), "si32")} -> {a}',
            f'%s = qnn.relu %r at "relu" : {a}',
            f"%m = qnn.max_pool2d %s kernel [2, 2] stride [1, 1] pad [0, 1, 0, 1] "
            f'dilation [1, 1] at "mp" : {a} -> {a}',
            f'%y = qnn.global_avg_pool %m at "gap" : {a} -> {p}',
        ],
    )
    values = trace(parse(text), x)
    # fc: [3 - 8 + 15, -6 + 0 + 5] = [10, -1]; [-1 + 4 - 21, 2 + 0 - 7] = [-18, -5].
    assert values["fc"].dtype == np.int32 and values["fc"].tolist() == [[10, -1], [-18, -5]]
    assert values["relu"].tolist() == [[[[10, 0], [0, 0]]]]
    # 2x2 max pool over int32-minimum padding at the bottom and right:
    # max(10, 0, 0, 0) = 10, max(0, 0) = 0, max(0, 0) = 0, 0.
    assert values["mp"].tolist() == [[[[10, 0], [0, 0]]]]
    # global average: 10 / 4 = 2.5 -> 3 (ties away from zero).
    assert values["gap"].tolist() == [[[[3]]]]


def test_integer_avg_pool_rounds_half_away_from_zero() -> None:
    x = np.array([[[[1, 2, -3, -4], [0, 0, 0, 0]]]], np.int8)
    t_in, t_out = ty((1, 1, 2, 4), "si8"), ty((1, 1, 1, 2), "si8")
    text = func(
        f"%x: {t_in}",
        t_out,
        [
            f'%y = qnn.avg_pool2d %x kernel [2, 2] stride [2, 2] pad [0, 0, 0, 0] at "ap" : '
            f"{t_in} -> {t_out}"
        ],
    )
    # (1 + 2) / 4 = 0.75 -> 1; (-3 - 4) / 4 = -1.75 -> -2.
    assert run(parse(text), x)[0].tolist() == [[[[1, -2]]]]


def test_integer_add_rescales_both_operands_and_saturates() -> None:
    s8 = ty((3,), "si8")
    text = func(
        f"%a: {s8}, %b: {s8}",
        s8,
        [
            "%y = qnn.add %a, %b from <si8, scale = [0.1], zp = [0]>, "
            "<si8, scale = [0.2], zp = [0]> to <si8, scale = [0.3], zp = [0]> "
            f'rounding "gemmlowp" at "block.add" : ({s8}, {s8}) -> {s8}'
        ],
    )
    a = np.array([10, -10, 127], np.int8)
    b = np.array([7, -8, 127], np.int8)
    # 10 * 0.1 + 7 * 0.2 = 2.4 = 8 * 0.3; -1.0 - 1.6 = -2.6 -> -8.67 -> -9;
    # 12.7 + 25.4 = 38.1 -> 127 (saturated at the si8 maximum).
    assert run(parse(text), a, b)[0].tolist() == [8, -9, 127]


@pytest.mark.parametrize(
    ("act", "expected"),
    [("", [19, -1, 127, -128, 7]), ("act <relu> ", [19, 7, 127, 7, 7])],
    ids=["plain", "relu"],
)
def test_integer_add_subtracts_each_operands_own_zero_point(act: str, expected: list[int]) -> None:
    s8 = ty((5,), "si8")
    text = func(
        f"%a: {s8}, %b: {s8}",
        s8,
        [
            "%y = qnn.add %a, %b from <si8, scale = [0.5], zp = [3]>, "
            "<si8, scale = [0.25], zp = [-5]> to <si8, scale = [0.5], zp = [7]> "
            f'rounding "gemmlowp" {act}at "block.add" : ({s8}, {s8}) -> {s8}'
        ],
    )
    a = np.array([10, -2, 127, -128, 3], np.int8)
    b = np.array([4, -10, 127, -128, -5], np.int8)
    # The sum 0.5 (a - 3) + 0.25 (b + 5) at scale 0.5, zp 7: y = 7 + round((a - 3) + (b + 5) / 2),
    # rounded once, half away from zero: (10, 4): 7 + 4.5 -> 12, + 7 = 19; (-2, -10): -5 - 2.5
    # -> -8, + 7 = -1; (127, 127): 190 + 7 -> 127; (-128, -128): -192.5 -> -193, + 7 -> -128;
    # (3, -5) is 0 + 0 -> 7, the output's zero point. A fused relu clamps at that zero point.
    assert run(parse(text), a, b)[0].tolist() == expected


def test_integer_add_without_parameters_does_not_verify() -> None:
    s8 = ty((2,), "si8")
    text = func(f"%a: {s8}, %b: {s8}", s8, [f'%y = qnn.add %a, %b at "add" : ({s8}, {s8}) -> {s8}'])
    with pytest.raises(VerifyException, match="an integer add needs the parameters"):
        parse(text)


SIMPLE = func(
    f"%x: {ty((1, 2, 3))}, %i: {ty((4,), 'si4')}",
    ty((1, 2, 3)),
    [f'%y = qnn.relu %x at "relu" : {ty((1, 2, 3))}'],
)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            (np.zeros((1, 2, 3), np.float32),),
            "Function @forward takes 2 inputs (tensor<1x2x3xf32>, tensor<4xsi4>), but 1 was given.",
        ),
        (
            (np.zeros((1, 3, 2), np.float32), np.zeros(4, np.int8)),
            "Input 0 of @forward expects shape [1, 2, 3] (tensor<1x2x3xf32>), "
            "but an array of shape [1, 3, 2] was given.",
        ),
        (
            (np.zeros((1, 2, 3), np.complex64), np.zeros(4, np.int8)),
            "Input 0 of @forward expects real numbers convertible to float32 "
            "(tensor<1x2x3xf32>), but an array of dtype complex64 was given.",
        ),
        (
            (np.zeros((1, 2, 3), bool), np.zeros(4, np.int8)),
            "Input 0 of @forward expects real numbers convertible to float32 "
            "(tensor<1x2x3xf32>), but an array of dtype bool was given.",
        ),
        (
            (np.zeros((1, 2, 3), np.float32), np.zeros(4, np.float32)),
            "Input 1 of @forward expects integers (tensor<4xsi4>), "
            "but an array of dtype float32 was given.",
        ),
        (
            (np.zeros((1, 2, 3), np.float32), np.array([0, 7, -8, 8])),
            "Input 1 of @forward expects values in [-8, 7] (tensor<4xsi4>), "
            "but the array holds values in [-8, 8].",
        ),
        (
            (np.zeros((1, 2, 3), np.float32), [1, "a", None, 2]),
            "Input 1 of @forward expects a tensor<4xsi4> array, but a list was given.",
        ),
    ],
)
def test_bad_inputs_are_rejected_with_a_sentence(inputs: tuple, message: str) -> None:
    with pytest.raises(InputError) as info:
        run(parse(SIMPLE), *inputs)
    assert str(info.value) == message


def test_float64_inputs_are_cast_and_integers_stored_in_their_type() -> None:
    x = RNG.standard_normal((1, 2, 3))
    (y,) = run(parse(SIMPLE), x, np.array([1, -2, 3, 7]))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.maximum(x.astype(np.float32), 0))


def test_an_unknown_function_names_the_ones_that_exist() -> None:
    module = parse(SIMPLE)
    with pytest.raises(InputError) as info:
        run(module, function="main")
    assert str(info.value) == "The module has no function @main; it defines @forward."
    with pytest.raises(InputError, match=r"^The module has no function @forward; it defines no "):
        run(parse("builtin.module {}"))


def test_trace_suffixes_repeated_paths_and_results_do_not_alias_inputs() -> None:
    s = ty((2, 2))
    text = func(
        f"%x: {s}",
        ty((4,)),
        [
            f'%a = qnn.relu %x at "act" : {s}',
            f'%b = qnn.clamp %a min 0.0 max 0.5 at "act" : {s}',
            f'%y = qnn.reshape %x at "flat" : {s} -> {ty((4,))}',
        ],
    )
    x = np.array([[-1.0, 0.25], [2.0, 0.75]], np.float32)
    values = trace(parse(text), x)
    assert list(values) == ["act", "act#1", "flat"]
    assert values["act#1"].tolist() == [[0.0, 0.25], [0.5, 0.5]]
    (y,) = run(parse(text), x)
    y[0] = 99.0
    assert x[0, 0] == -1.0


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2"])
def test_zoo_models_imported_by_the_frontend_match_torch(name: str) -> None:
    from dopant.compiler.frontend import import_model
    from dopant.compiler.models.zoo import get

    entry = get(name)
    model = entry.build()
    x = torch.randn(2, *entry.input_shape[1:], generator=torch.Generator().manual_seed(0))
    (y,) = run(import_model(model, x), x.numpy())
    with torch.no_grad():
        assert_close(y, model(x))
