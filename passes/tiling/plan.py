"""What `tile` decides and `convert-qnn-to-accel` reads: tile plans as op attributes and the
layer shapes both passes work from.

A plan is a dictionary attribute named `tile` on each op that becomes instructions:

    qnn.conv2d ... at "layer1.0.conv1" {tile = {n = 16 : i64, rows = 14 : i64, c = 16 : i64,
                                                order = "nrc", cycles = 7480 : i64}}
    qnn.add ... at "layer1.0/add" {tile = {c = 16 : i64, rows = 28 : i64, cycles = 1900 : i64}}

`n` output channels, `rows` output rows and `c` input channels per tile (a conv with more input
channels than `c` accumulates K-chunks); `order` is the loop nest from outer to inner ("nrc":
output-channel tiles outside row tiles, "rnc" the reverse; input-channel chunks are always
innermost, so a tile's partial sums stay in the accumulator); `cycles` is the cost model's
estimate for the layer. The module carries the machine as `accel.config` (`backend.config_attr`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xdsl.dialects.builtin import (
    DictionaryAttr,
    IntegerAttr,
    IntegerType,
    Signedness,
    StringAttr,
    i64,
)
from xdsl.ir import Attribute, Operation, SSAValue

from dopant.dialects.qnn import ConstantOp, Conv2DOp, LinearOp, QnnOp, RequantizeOp
from dopant.dialects.qnn.base import element, ints, shape
from dopant.support.errors import DopantError

PLAN_ATTR = "tile"
ORDERS = ("nrc", "rnc")


def _plan_attr(plan: ConvPlan | VectorPlan) -> DictionaryAttr:
    """A plan as its `tile` attribute: each field an i64, or a string (the loop order)."""
    fields = dataclasses.asdict(plan).items()
    return DictionaryAttr(
        {k: StringAttr(v) if isinstance(v, str) else IntegerAttr(v, i64) for k, v in fields}
    )


@dataclass(frozen=True)
class ConvPlan:
    """Tile sizes and loop order of a conv2d or linear layer (with its requantize)."""

    n: int
    rows: int
    c: int
    order: str
    cycles: int

    def attr(self) -> DictionaryAttr:
        return _plan_attr(self)


@dataclass(frozen=True)
class VectorPlan:
    """Tile sizes of a vector-unit layer: `c` channels by `rows` (output) rows per tile."""

    c: int
    rows: int
    cycles: int

    def attr(self) -> DictionaryAttr:
        return _plan_attr(self)


def _entries(op: QnnOp, names: tuple[str, ...]) -> dict[str, Attribute]:
    attr = op.attributes.get(PLAN_ATTR)
    if not isinstance(attr, DictionaryAttr):
        raise DopantError(f"{op.where} has no tile plan; run the tile pass first.")
    data = attr.data
    missing = [name for name in names if name not in data]
    if missing:
        raise DopantError(f"{op.where}: the tile plan lacks {', '.join(missing)}.")
    return dict(data)


def _int(op: QnnOp, data: dict[str, Attribute], name: str) -> int:
    value = data[name]
    if not isinstance(value, IntegerAttr) or value.value.data < (0 if name == "cycles" else 1):
        raise DopantError(f"{op.where}: tile plan entry {name} must be a positive integer.")
    return value.value.data


def conv_plan(op: QnnOp) -> ConvPlan:
    """The plan `tile` recorded on a conv2d or linear; DopantError if absent or malformed."""
    data = _entries(op, ("n", "rows", "c", "order"))
    order = data["order"]
    if not isinstance(order, StringAttr) or order.data not in ORDERS:
        raise DopantError(f"{op.where}: tile plan order must be one of {', '.join(ORDERS)}.")
    cycles = _int(op, data, "cycles") if "cycles" in data else 0
    return ConvPlan(
        _int(op, data, "n"), _int(op, data, "rows"), _int(op, data, "c"), order.data, cycles
    )


def vector_plan(op: QnnOp) -> VectorPlan:
    """The plan `tile` recorded on a vector-unit op; DopantError if absent or malformed."""
    data = _entries(op, ("c", "rows"))
    cycles = _int(op, data, "cycles") if "cycles" in data else 0
    return VectorPlan(_int(op, data, "c"), _int(op, data, "rows"), cycles)


# ---- element types -------------------------------------------------------------------------


@dataclass(frozen=True)
class Elem:
    """An integer element type: width in bits and signedness."""

    bits: int
    signed: bool

    @staticmethod
    def of(value: SSAValue) -> Elem:
        ty = element(value)
        if not isinstance(ty, IntegerType):
            raise DopantError(f"expected an integer tensor, got {ty}.")
        return Elem(ty.width.data, ty.signedness.data != Signedness.UNSIGNED)

    @property
    def field_bits(self) -> int:
        """The width an instruction moves it at: 2, 4 or 8 (3 bits travel as 4), or 32."""
        return next(b for b in (2, 4, 8, 32) if b >= self.bits)


def fused_requantize(op: Conv2DOp | LinearOp) -> RequantizeOp:
    """The requantize that rescales a layer's si32 accumulator (its only user)."""
    users = [use.operation for use in op.output.uses]
    if len(users) != 1 or not isinstance(users[0], RequantizeOp):
        raise DopantError(
            f"{op.where}: the si32 accumulator must feed exactly one qnn.requantize (as "
            "quantize emits it), so the accelerator can requantize it on the way out."
        )
    return users[0]


@dataclass(frozen=True)
class ConvShape:
    """A conv2d or linear layer at batch 1 as the array sees it: a linear is a 1x1 conv on a
    [K, 1, 1] input giving [N, 1, 1]. Padding below and right of the input needs no number: the
    loads read zeros past the source plane."""

    path: str
    c: int
    h: int
    w: int
    n: int
    oh: int
    ow: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad_top: int
    pad_left: int
    groups: int
    x: Elem
    weight: Elem
    out: Elem
    has_bias: bool

    @staticmethod
    def of(op: Conv2DOp | LinearOp) -> ConvShape:
        out = Elem.of(fused_requantize(op).output)
        x, wgt = Elem.of(op.input), Elem.of(op.weight)
        bias = _nonzero_bias(op)
        if isinstance(op, LinearOp):
            (batch, k), (n, _) = shape(op.input), shape(op.weight)
            _batch_one(op, batch)
            return ConvShape(
                op.path.data, k, 1, 1, n, 1, 1, 1, 1, (1, 1), (1, 1), 0, 0, 1, x, wgt, out, bias
            )
        (batch, c, h, w), (n, _, kh, kw) = shape(op.input), shape(op.weight)
        _batch_one(op, batch)
        _, _, oh, ow = shape(op.output)
        sh, sw = ints(op.strides)
        dh, dw = ints(op.dilation)
        top, _, left, _ = ints(op.padding)
        groups = op.groups.value.data
        return ConvShape(
            path=op.path.data,
            c=c,
            h=h,
            w=w,
            n=n,
            oh=oh,
            ow=ow,
            kh=kh,
            kw=kw,
            stride=(sh, sw),
            dilation=(dh, dw),
            pad_top=top,
            pad_left=left,
            groups=groups,
            x=x,
            weight=wgt,
            out=out,
            has_bias=bias,
        )

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def og(self) -> int:
        """Output channels per group."""
        return self.n // self.groups

    def in_rows(self, rows: int) -> int:
        """Input rows (padding included) that `rows` output rows read."""
        return (rows - 1) * self.stride[0] + (self.kh - 1) * self.dilation[0] + 1

    @property
    def in_cols(self) -> int:
        """Input columns (padding included) that a whole output row reads."""
        return (self.ow - 1) * self.stride[1] + (self.kw - 1) * self.dilation[1] + 1

    def tile_channels(self, n: int, c: int) -> int:
        """Input channels of a tile of `n` outputs: the K-chunk `c`, or its groups' channels."""
        return c if self.groups == 1 else n // self.og * self.cg


def _nonzero_bias(op: Conv2DOp | LinearOp) -> bool:
    """Whether the layer adds a bias: an all-zero one (common after folding an untrained batch
    norm) adds nothing, so the first K-chunk may overwrite the accumulator instead."""
    if op.bias is None:
        return False
    owner = op.bias.owner
    return not isinstance(owner, ConstantOp) or bool(owner.numpy().any())


def _batch_one(op: Operation, batch: int) -> None:
    if batch != 1:
        where = op.where if isinstance(op, QnnOp) else op.name
        raise DopantError(
            f"{where}: the accelerator runs batch 1, but the input has batch {batch}; run "
            "set-batch{size=1} first."
        )
