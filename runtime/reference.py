"""The reference interpreter of the `qnn` dialect: what a dopant network computes, in numpy.

`run(module, *inputs)` executes a function (default `@forward`) on xDSL's interpreter and returns
its results; `trace(module, *inputs)` also returns every `qnn` op's value keyed by module path.

Float semantics (f32 tensors) equal torch to about 1e-6 of each output's magnitude
(`runtime.kernels`). Integer semantics are the definition of the quantized network, built on
`runtime.intops`:

- quantize / dequantize / requantize follow their op docstrings; requantize forms
  M = scale_in / scale_out per channel in float64, converts it with `quantize_multiplier` and
  applies `intops.requantize` with the op's rounding; a fused `act` narrows the output clamp to
  `intops.activation_range`.
- Current integer contract, to be extended when zero points reach the IR: every integer tensor
  outside quantize / dequantize / requantize is an exact integer with zero point 0 (as the si32
  accumulators are). An integer conv2d or linear computes the plain sum x * w + b exactly (int64,
  through float64 BLAS while every partial sum is below 2^53); relu is max(q, 0), clamp and
  fused activations clip to [ceil(lo), floor(hi)], add sums exactly, max pooling pads with the
  storage minimum (zeros with `zero_pad`), average pooling divides window sums with
  `intops.rounding_divide` (TFLite's integer AveragePool). A result that does not fit its element
  type raises `ExecutionError` naming the op; nothing wraps or saturates silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from xdsl.dialects.builtin import (
    Float32Type,
    Float64Type,
    IntegerType,
    ModuleOp,
    Signedness,
    TensorType,
)
from xdsl.dialects.func import FuncOp
from xdsl.interpreter import Interpreter, InterpreterFunctions, PythonValues, impl, register_impls
from xdsl.interpreters.func import FuncFunctions
from xdsl.ir import Attribute, Operation

from dopant.dialects import qnn
from dopant.dialects.qnn.base import ints
from dopant.dialects.qnn.layers import numpy_dtype, to_numpy
from dopant.dialects.qnn.values import value_names
from dopant.runtime import intops, kernels
from dopant.support.errors import ExecutionError, InputError

_EXACT = 2.0**53  # float64 sums of integers below this are exact


class _Escape(BaseException):
    """Carries an error out of the interpreter untouched: xDSL catches `Exception` raised by an
    op and prints the whole module, weights included, into the error's notes (XDSL.md)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _guarded(fn: Callable[..., PythonValues]) -> Callable[..., PythonValues]:
    def run_guarded(self: Any, interp: Interpreter, op: Operation, args: PythonValues) -> Any:
        try:
            return fn(self, interp, op, args)
        except Exception as error:
            raise _Escape(error) from None

    return run_guarded


def _int_range(elem: Attribute) -> tuple[int, int]:
    assert isinstance(elem, IntegerType)
    bits = elem.width.data
    if elem.signedness.data == Signedness.UNSIGNED:
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _element(op: Operation) -> Attribute:
    ty = op.results[0].type
    assert isinstance(ty, TensorType)
    return ty.get_element_type()


def _is_int(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.integer)


def _fit(op: qnn.QnnOp, value: np.ndarray) -> np.ndarray:
    """A result in its numpy storage; an integer result is first checked to fit its type."""
    if not _is_int(value):
        return value
    elem = _element(op)
    lo, hi = _int_range(elem)
    if value.size and (value.min() < lo or value.max() > hi):
        raise ExecutionError(
            f"{op.where}: the integer result spans [{value.min()}, {value.max()}], which does "
            f"not fit {elem} [{lo}, {hi}]; rescale with qnn.requantize before it overflows."
        )
    return value.astype(numpy_dtype(elem), copy=False)


def _clamp(y: np.ndarray, act: qnn.ActivationAttr | tuple[float, float] | None) -> np.ndarray:
    """`y` clamped to real bounds (a fused activation or a relu). On integers (zero point 0)
    only a relu exists, max(q, 0): other integer clamps are requantizes (verifiers ensure it)."""
    if act is None:
        return y
    lo, hi = act.bounds if isinstance(act, qnn.ActivationAttr) else act
    if not _is_int(y):
        return kernels.apply_activation(y, lo, hi)
    assert (lo, hi) == (0.0, math.inf), "integer clamps other than relu do not verify"
    return np.maximum(y.astype(np.int64), 0)


def _activation_bounds(
    act: qnn.ActivationAttr | None, out: qnn.QuantParamsAttr
) -> tuple[np.ndarray, np.ndarray]:
    """The integer output range: the storage type's, narrowed by a fused activation."""
    if act is None:
        return np.asarray(out.qmin, np.int64), np.asarray(out.qmax, np.int64)
    scales, zps, _ = _params(out)
    return intops.activation_range(*act.bounds, scales, zps, out.qmin, out.qmax)


def _integer_layer(
    op: qnn.QnnOp,
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    depth: int,
    act: qnn.ActivationAttr | None,
) -> np.ndarray:
    """sum x * w (+ bias) of an integer layer, exact, checked to fit the si32 accumulator."""
    xi, wi = x.astype(np.int64), w.astype(np.int64)
    peak = depth * int(np.abs(xi).max(initial=0)) * int(np.abs(wi).max(initial=0))
    if peak < _EXACT:
        acc = np.rint(compute(xi.astype(np.float64), wi.astype(np.float64))).astype(np.int64)
    elif peak < 2**63:
        acc = compute(xi, wi)
    else:
        raise ExecutionError(f"{op.where}: the integer products may overflow 64 bits.")
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    return _fit(op, _clamp(acc, act))


def _dense(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return kernels.linear(x, w, None)


def _params(p: qnn.QuantParamsAttr) -> tuple[np.ndarray, np.ndarray, int | None]:
    axis = p.axis.data if p.is_per_channel else None
    return np.asarray(p.scales, np.float64), np.asarray(p.zero_points, np.int64), axis


@register_impls
class QnnFunctions(InterpreterFunctions):
    """numpy implementations of every `qnn` op; values are numpy arrays."""

    @impl(qnn.ConstantOp)
    @_guarded
    def run_constant(self, interp: Interpreter, op: qnn.ConstantOp, args: PythonValues) -> Any:
        cache = interp.get_data(QnnFunctions, "constants", dict)
        if op not in cache:
            cache[op] = to_numpy(op.value)
        return (cache[op],)

    @impl(qnn.Conv2DOp)
    @_guarded
    def run_conv2d(self, interp: Interpreter, op: qnn.Conv2DOp, args: PythonValues) -> Any:
        x, w, *rest = args
        bias = rest[0] if rest else None
        strides, padding, dilation = ints(op.strides), ints(op.padding), ints(op.dilation)
        groups = op.groups.value.data

        def conv(xs: np.ndarray, ws: np.ndarray) -> np.ndarray:
            return kernels.conv2d(xs, ws, None, strides, padding, dilation, groups)

        if _is_int(x):
            depth = w.shape[1] * w.shape[2] * w.shape[3]
            return (_integer_layer(op, conv, x, w, bias, depth, op.act),)
        y = kernels.conv2d(x, w, bias, strides, padding, dilation, groups)
        return (_clamp(y, op.act),)

    @impl(qnn.LinearOp)
    @_guarded
    def run_linear(self, interp: Interpreter, op: qnn.LinearOp, args: PythonValues) -> Any:
        x, w, *rest = args
        bias = rest[0] if rest else None
        if _is_int(x):
            return (_integer_layer(op, _dense, x, w, bias, w.shape[1], op.act),)
        return (_clamp(kernels.linear(x, w, bias), op.act),)

    @impl(qnn.BatchNormOp)
    @_guarded
    def run_batch_norm(self, interp: Interpreter, op: qnn.BatchNormOp, args: PythonValues) -> Any:
        x, scale, shift, mean, var = args
        return (kernels.batch_norm(x, scale, shift, mean, var, op.eps.value.data),)

    @impl(qnn.ReluOp)
    @_guarded
    def run_relu(self, interp: Interpreter, op: qnn.ReluOp, args: PythonValues) -> Any:
        return (_fit(op, _clamp(args[0], (0.0, math.inf))),)

    @impl(qnn.ClampOp)
    @_guarded
    def run_clamp(self, interp: Interpreter, op: qnn.ClampOp, args: PythonValues) -> Any:
        return (_fit(op, _clamp(args[0], op.bounds)),)

    @impl(qnn.AddOp)
    @_guarded
    def run_add(self, interp: Interpreter, op: qnn.AddOp, args: PythonValues) -> Any:
        lhs, rhs = args
        params = op.params
        if params is None:
            return (_clamp(lhs + rhs, op.act),)
        (s_l, z_l, _), (s_r, z_r, _), (s_o, z_o, _) = (_params(p) for p in params)
        q_lo, q_hi = _activation_bounds(op.act, params[2])
        assert op.rounding is not None, "integer adds verify with a rounding"
        q = intops.add_rescaled(
            lhs,
            rhs,
            (int(z_l[0]), int(z_r[0]), int(z_o[0])),
            intops.quantize_multipliers(s_l / s_o),
            intops.quantize_multipliers(s_r / s_o),
            q_lo,
            q_hi,
            op.rounding.data,
        )
        return (q.astype(numpy_dtype(params[2].element_type)),)

    @impl(qnn.MaxPool2DOp)
    @_guarded
    def run_max_pool2d(self, interp: Interpreter, op: qnn.MaxPool2DOp, args: PythonValues) -> Any:
        kernel, strides, padding = op.pool_props()
        pool = kernels.Pool.of(
            kernel, strides, padding, op.ceil_mode is not None, ints(op.dilation)
        )
        y = kernels.max_pool2d(args[0], pool, op.zero_pad is not None)
        return (_fit(op, y),)

    @impl(qnn.AvgPool2DOp)
    @_guarded
    def run_avg_pool2d(self, interp: Interpreter, op: qnn.AvgPool2DOp, args: PythonValues) -> Any:
        (x,) = args
        kernel, strides, padding = op.pool_props()
        pool = kernels.Pool.of(kernel, strides, padding, op.ceil_mode is not None)
        y = kernels.avg_pool2d(x, pool, op.count_include_pad is not None)
        return (_fit(op, y),)

    @impl(qnn.GlobalAvgPoolOp)
    @_guarded
    def run_global_avg_pool(
        self, interp: Interpreter, op: qnn.GlobalAvgPoolOp, args: PythonValues
    ) -> Any:
        (x,) = args
        if not _is_int(x):
            return (kernels.global_avg_pool(x),)
        total = x.astype(np.int64).sum(axis=(2, 3), keepdims=True)
        return (_fit(op, intops.rounding_divide(total, max(x.shape[2] * x.shape[3], 1))),)

    @impl(qnn.ReshapeOp)
    @_guarded
    def run_reshape(self, interp: Interpreter, op: qnn.ReshapeOp, args: PythonValues) -> Any:
        ty = op.output.type
        assert isinstance(ty, TensorType)
        return (args[0].reshape(tuple(ty.get_shape())),)

    @impl(qnn.ConcatOp)
    @_guarded
    def run_concat(self, interp: Interpreter, op: qnn.ConcatOp, args: PythonValues) -> Any:
        return (np.concatenate(args, axis=op.axis.value.data),)

    @impl(qnn.QuantizeOp)
    @_guarded
    def run_quantize(self, interp: Interpreter, op: qnn.QuantizeOp, args: PythonValues) -> Any:
        p = op.params
        scale, zp, axis = _params(p)
        q = intops.quantize(args[0], scale, zp, p.qmin, p.qmax, axis)
        return (q.astype(numpy_dtype(p.element_type)),)

    @impl(qnn.DequantizeOp)
    @_guarded
    def run_dequantize(self, interp: Interpreter, op: qnn.DequantizeOp, args: PythonValues) -> Any:
        scale, zp, axis = _params(op.params)
        return (intops.dequantize(args[0], scale, zp, axis),)

    @impl(qnn.RequantizeOp)
    @_guarded
    def run_requantize(self, interp: Interpreter, op: qnn.RequantizeOp, args: PythonValues) -> Any:
        s_in, z_in, axis_in = _params(op.in_params)
        s_out, z_out, axis_out = _params(op.out_params)
        if None not in (axis_in, axis_out) and axis_in != axis_out:
            raise ExecutionError(
                f"{op.where}: per-channel input (axis {axis_in}) and result (axis {axis_out}) "
                "parameters must share one axis."
            )
        axis = axis_in if axis_in is not None else axis_out
        m0, shift = intops.quantize_multipliers(s_in / s_out)
        out = op.out_params
        q_lo, q_hi = _activation_bounds(op.act, out)
        q = intops.requantize(args[0], z_in, z_out, m0, shift, q_lo, q_hi, op.rounding.data, axis)
        return (q.astype(numpy_dtype(out.element_type)),)


def _function(module: ModuleOp, name: str) -> FuncOp:
    funcs = [op for op in module.ops if isinstance(op, FuncOp)]
    for fn in funcs:
        if fn.sym_name.data == name:
            return fn
    known = ", ".join(f"@{fn.sym_name.data}" for fn in funcs)
    defines = f"it defines {known}" if funcs else "it defines no functions"
    raise InputError(f"The module has no function @{name}; {defines}.")


def _check_input(where: str, value: object, ty: Attribute) -> np.ndarray:
    """`value` as the numpy array an argument of type `ty` takes, or an InputError."""
    if not isinstance(ty, TensorType) or not isinstance(
        ty.get_element_type(), Float32Type | Float64Type | IntegerType
    ):
        raise InputError(f"{where} has type {ty}, which the reference interpreter cannot take.")
    elem = ty.get_element_type()
    expected = tuple(ty.get_shape())
    array = np.asarray(value)
    if array.dtype == object:
        raise InputError(f"{where} expects a {ty} array, but a {type(value).__name__} was given.")
    if len(array.shape) != len(expected) or any(
        e not in (-1, g) for e, g in zip(expected, array.shape, strict=True)
    ):
        raise InputError(
            f"{where} expects shape {list(expected)} ({ty}), but an array of shape "
            f"{list(array.shape)} was given."
        )
    if isinstance(elem, IntegerType):
        if not _is_int(array):
            raise InputError(
                f"{where} expects integers ({ty}), but an array of dtype {array.dtype} was given."
            )
        lo, hi = _int_range(elem)
        if array.size and (array.min() < lo or array.max() > hi):
            raise InputError(
                f"{where} expects values in [{lo}, {hi}] ({ty}), but the array holds values in "
                f"[{array.min()}, {array.max()}]."
            )
        return array.astype(numpy_dtype(elem), copy=False)
    if array.dtype.kind not in "iuf":
        raise InputError(
            f"{where} expects real numbers convertible to {numpy_dtype(elem)} ({ty}), but an "
            f"array of dtype {array.dtype} was given."
        )
    return array.astype(numpy_dtype(elem), copy=False)


def _check_inputs(fn: FuncOp, inputs: Sequence[object]) -> tuple[np.ndarray, ...]:
    name = fn.sym_name.data
    types = fn.function_type.inputs.data
    if len(inputs) != len(types):
        listed = ", ".join(str(t) for t in types)
        takes = f"{len(types)} input{'s' if len(types) != 1 else ''}"
        raise InputError(
            f"Function @{name} takes {takes} ({listed}), but {len(inputs)} "
            f"{'was' if len(inputs) == 1 else 'were'} given."
        )
    return tuple(
        _check_input(f"Input {i} of @{name}", value, ty)
        for i, (value, ty) in enumerate(zip(inputs, types, strict=True))
    )


class _Recorder(Interpreter.Listener):
    """Keeps the value of every `qnn` op (constants excepted) under its `value_names` name."""

    def __init__(self, fn: FuncOp) -> None:
        self.values: dict[str, np.ndarray] = {}
        self._names = value_names(fn.body.walk())

    def did_interpret_op(self, op: Operation, results: PythonValues) -> None:
        if op in self._names:
            self.values[self._names[op]] = results[0]


def _execute(
    module: ModuleOp,
    inputs: Sequence[object],
    function: str,
    listeners: tuple[Interpreter.Listener, ...] = (),
) -> tuple[np.ndarray, ...]:
    fn = _function(module, function)
    arrays = _check_inputs(fn, inputs)
    interp = Interpreter(module, listeners=listeners)
    interp.register_implementations(FuncFunctions())
    interp.register_implementations(QnnFunctions())
    try:
        results = interp.call_op(fn, arrays)
    except _Escape as escape:
        raise escape.error from None
    # Results are fresh arrays the caller may modify: never a view of an input or a constant.
    return tuple(r if r.flags.owndata and r.flags.writeable else r.copy() for r in results)


def run(module: ModuleOp, *inputs: np.ndarray, function: str = "forward") -> tuple[np.ndarray, ...]:
    """Run `function` of `module` on `inputs` and return its results as numpy arrays.

    Inputs are checked against the signature first (count, shape, dtype, integer range); a
    mismatch raises `InputError` naming the input. Float arguments take any real array (float64
    is cast to float32); integer arguments take integer arrays whose values fit the type.
    """
    return _execute(module, inputs, function)


def trace(
    module: ModuleOp, *inputs: np.ndarray, function: str = "forward"
) -> dict[str, np.ndarray]:
    """Run like `run` and return the value of every `qnn` op (not constants) by module path,
    in execution order; a path used by several ops gets `#1`, `#2`, ... from its second use."""
    recorder = _Recorder(_function(module, function))
    _execute(module, inputs, function, (recorder,))
    return recorder.values
