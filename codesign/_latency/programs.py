"""One row of a network timed alone: the single-op program of a layer signature.

A row's `Template` is what its program needs besides the widths: the op, the spatial dims of
its input and result, its properties (strides, padding, pooling windows), its fused activation,
the signedness of its input and whether it adds a bias. `Template.key(c_in, c_out, w, a)` is
the signature text, the cache key: rows with the same template share their entries.

`measure` builds the program as float `qnn` IR, input (1, c_in, *spatial) -> the op -> output,
quantizes it with `quantize` at the widths asked for and times it with the latency oracle
(`driver.latency`, the timing model's cycles). The program is built for timing only:
- Weights are a fixed pattern and calibration ranges are synthetic: the timing model reads
  shapes and widths, not values, with one exception: the tiler skips an all-zero bias
  (`tiling.plan`), so a template records whether the network's bias is nonzero and the
  program gets a bias of ones or none.
- Widths: the input is stored at `a_bits` (a layer's activation width is that of the input it
  reads), and so is the result (`output_bits`). In the network a result is stored at the widest
  a_bits among its readers, so an entry is exact for a layer whose readers share its a_bits.
- Vector ops: an add reads its input as both operands (one shape, one width, two loads, as a
  residual add's two operands); relu, clamp (a standalone requantize: ReLU6 left unfused), max
  and average pooling and global average pooling read their one input.
- Signedness: the input is signed as in the network; the result is unsigned after a ReLU or a
  clamp at or above 0, as calibration makes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from xdsl.builder import ImplicitBuilder
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    UnitAttr,
    f32,
    i64,
)
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.irdl import IRDLOperation

from dopant.backend.target import AccelConfig
from dopant.compiler.calibrate import ACT_BITS
from dopant.compiler.driver import latency
from dopant.dialects.context import make_context
from dopant.dialects.qnn import (
    ActivationAttr,
    AddOp,
    AvgPool2DOp,
    CalibrationAttr,
    ClampOp,
    ConstantOp,
    Conv2DOp,
    GlobalAvgPoolOp,
    LinearOp,
    MaxPool2DOp,
    ReluOp,
)
from dopant.dialects.qnn.base import ints
from dopant.passes.quantize import QuantizePass

LAYER_OPS = ("conv2d", "linear")
_WINDOW_OPS: dict[str, type[IRDLOperation]] = {"max_pool2d": MaxPool2DOp, "avg_pool2d": AvgPool2DOp}
VECTOR_OPS = ("add", "relu", "clamp", "global_avg_pool", *_WINDOW_OPS)
PATH = "layer"  # the module path of the one op of a program
# A weight pattern without zeros, so every output channel has a nonzero scale.
_PATTERN = np.linspace(-1.0, 1.0, 256, dtype=np.float32)

Act = tuple[float, float] | None  # a fused activation's clamp bounds; relu is (0, inf)


@dataclass(frozen=True)
class Template:
    """A row's program at full width, less its channel counts and bit widths.

    `op` is one of LAYER_OPS or VECTOR_OPS; `props` the op's properties that shape its work
    (strides, padding, dilation, a pool's kernel), by property name; `kernel` a conv's weight
    window; `groups` a grouped conv's groups (kept at every width) and `depthwise` a conv whose
    groups follow its input channels (out = multiplier x in).
    """

    op: str
    spatial: tuple[int, ...]
    out_spatial: tuple[int, ...]
    x_signed: bool
    act: Act = None
    props: tuple[tuple[str, Attribute], ...] = ()
    kernel: tuple[int, ...] = ()
    groups: int = 1
    depthwise: bool = False
    bias: bool = False

    @property
    def is_layer(self) -> bool:
        return self.op in LAYER_OPS

    def key(self, c_in: int, c_out: int, w_bits: int, a_bits: int, out_bits: int) -> str:
        """The signature text of this template at these channel counts and widths, e.g.
        `conv2d in=64x28x28 out=64x28x28 k=3x3 g=1 strides=1,1 padding=1,1,1,1 dilation=1,1
        bias act=relu x=u w8a8`; a vector op's text has one count and no weight width."""
        dims = "".join(f"x{d}" for d in self.spatial)
        out_dims = "".join(f"x{d}" for d in self.out_spatial)
        if self.is_layer:
            parts = [self.op, f"in={c_in}{dims}", f"out={c_out}{out_dims}"]
        else:
            parts = [self.op, f"c={c_out}{dims}", f"to={out_dims[1:] or '-'}"]
        if self.op == "conv2d":
            parts += ["k=" + "x".join(map(str, self.kernel)), "dw" if self.depthwise else ""]
            parts[-1] = parts[-1] or f"g={self.groups}"
        parts += [f"{name}={_text(attr)}" for name, attr in self.props]
        parts += ["bias"] if self.bias else []
        parts += [f"act={_act_text(self.act)}"] if self.act is not None else []
        parts += ["x=s" if self.x_signed else "x=u"]
        parts += [f"w{w_bits}a{a_bits}" if self.is_layer else f"a{a_bits}"]
        parts[-1] += f"o{out_bits}" if out_bits != a_bits else ""
        return " ".join(parts)


def _text(attr: Attribute) -> str:
    if isinstance(attr, DenseArrayBase):
        return ",".join(map(str, ints(attr)))
    if isinstance(attr, IntegerAttr):
        return str(attr.value.data)
    if isinstance(attr, UnitAttr):
        return "1"
    return str(attr)


def _act_text(act: tuple[float, float]) -> str:
    return "relu" if act == (0.0, math.inf) else f"clamp({act[0]:g},{act[1]:g})"


def activation(act: Act) -> ActivationAttr | None:
    """The ActivationAttr with these bounds (relu for (0, inf)), or None."""
    if act is None:
        return None
    return ActivationAttr.relu() if act == (0.0, math.inf) else ActivationAttr.clamp(*act)


def calibration(signed: bool) -> CalibrationAttr:
    """A synthetic range at every activation width: [-1, 1] for a signed value, else [0, 1]."""
    return CalibrationAttr.get("minmax", {b: (-1.0 if signed else 0.0, 1.0) for b in ACT_BITS})


def _weights(shape: tuple[int, ...]) -> np.ndarray:
    return np.resize(_PATTERN, shape)


def _signed_result(t: Template) -> bool:
    if t.op == "relu":
        return False
    if t.act is not None:
        return t.act[0] < 0
    return t.x_signed if t.op in (*_WINDOW_OPS, "global_avg_pool") else True


def _op(t: Template, x: SSAValue, c_in: int, c_out: int, out_type: TensorType) -> SSAValue:
    """The program's one op on `x`, built in the current ImplicitBuilder block."""
    path = StringAttr(PATH)
    if t.is_layer:
        groups = c_in if t.depthwise else t.groups
        kernel = (c_out, c_in // groups, *t.kernel) if t.op == "conv2d" else (c_out, c_in)
        weight = ConstantOp.of(_weights(kernel), f"{PATH}.weight").result
        bias = ConstantOp.of(np.ones(c_out, np.float32), f"{PATH}.bias").result if t.bias else None
        props: dict[str, Attribute | None] = {**dict(t.props), "path": path}
        props["act"] = activation(t.act)
        if t.op == "conv2d":
            props["groups"] = IntegerAttr(groups, i64)
        kind = Conv2DOp if t.op == "conv2d" else LinearOp
        layer = kind.build(operands=[x, weight, bias], result_types=[out_type], properties=props)
        return layer.results[0]
    if t.op == "add":
        return AddOp(x, x, path=PATH, act=activation(t.act)).output
    if t.op == "relu":
        return ReluOp(x, path=PATH).output
    if t.op == "clamp":
        assert t.act is not None, "a clamp template carries its bounds"
        return ClampOp(x, lo=t.act[0], hi=t.act[1], path=PATH).output
    kind_of: dict[str, type[IRDLOperation]] = {**_WINDOW_OPS, "global_avg_pool": GlobalAvgPoolOp}
    pool = kind_of[t.op].build(
        operands=[x], result_types=[out_type], properties={**dict(t.props), "path": path}
    )
    return pool.results[0]


def program(t: Template, c_in: int, c_out: int) -> ModuleOp:
    """The float, calibrated single-op program of `t` with `c_in` input and `c_out` output
    channels (equal for a vector op). Callers check the counts (a grouped conv's divide its
    groups); the program is not verified."""
    x_type = TensorType(f32, [1, c_in, *t.spatial])
    out_type = TensorType(f32, [1, c_out, *t.out_spatial])
    module = ModuleOp([])
    with ImplicitBuilder(module.body):
        fn = func.FuncOp("forward", ([x_type], [out_type]))
        with ImplicitBuilder(fn.body) as (x,):
            result = _op(t, x, c_in, c_out, out_type)
            assert isinstance(result.owner, Operation), "an op's result"
            result.owner.attributes["calib"] = calibration(_signed_result(t))
            func.ReturnOp(result)
    fn.arg_attrs = ArrayAttr([DictionaryAttr({"qnn.calib": calibration(t.x_signed)})])
    return module


def measure(
    t: Template,
    c_in: int,
    c_out: int,
    w_bits: int,
    a_bits: int,
    out_bits: int,
    config: AccelConfig,
) -> int:
    """Cycles of `t`'s program at these counts and widths on `config`: the timing model's total
    (the one row's added cycles). Weights at `w_bits` (a vector op has none), input at
    `a_bits`, result stored at `out_bits`."""
    module = program(t, c_in, c_out)
    quantizer = QuantizePass(weight_bits=w_bits, act_bits=a_bits, output_bits=out_bits)
    quantizer.apply(make_context(), module)
    return latency(module, config).total_cycles
