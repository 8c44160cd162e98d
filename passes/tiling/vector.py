"""The instructions of vector-unit tiles (residual add, requantize/relu, pooling) and of copies
(concat), built one way for both `tile` (to cost them) and `convert-qnn-to-accel` (to emit them).

A tensor is seen as a [c, h, w] plane at batch 1 (a [1, K] tensor is [K, 1, 1]); a tile is `c`
channels by `rows` output rows over whole rows. On-chip layout (double buffered, from 0):

    scratchpad   [input 0][input 1][output 0][output 1]   (an add's input holds a, then b)
    accumulator  [params]                                  (vadd: 4 words, vrequant: 2)

or mirrored to the top of both memories (`flipped`).

A copy has no output buffers: it stores the block it loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from dopant.backend.image import element_bytes
from dopant.backend.target import AccelConfig
from dopant.dialects.shapes import window_out
from dopant.passes.tiling.conv import Fields, Pair, acc_load, spans
from dopant.passes.tiling.plan import Elem, VectorPlan
from dopant.support.errors import DopantError

KINDS = ("add", "requant", "pool", "copy")
Span = tuple[int, int]


@dataclass(frozen=True)
class Window:
    """Pooling geometry: kernel, stride, padding [top, bottom, left, right] and torch's flags."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    ceil_mode: bool
    avg: bool
    zero_pad: bool = False
    count_include_pad: bool = False


@dataclass(frozen=True)
class Plane:
    """A [c, h, w] tensor in DRAM from byte `dram`, or the part of one from element `origin`
    on (where a concat input goes)."""

    dram: int
    dims: tuple[int, int, int]
    elem: Elem
    origin: tuple[int, int, int] = (0, 0, 0)

    def address(self, c: int, r: int) -> int:
        """The byte address of element (c, r, 0) of the part."""
        (_, h, w), (oc, orow, ocol) = self.dims, self.origin
        return self.dram + ((c + oc) * h * w + (r + orow) * w + ocol) * element_bytes(
            self.elem.bits
        )

    def shifted(self, c: int, r: int, col: int) -> Plane:
        oc, orow, ocol = self.origin
        return Plane(self.dram, self.dims, self.elem, (oc + c, orow + r, ocol + col))

    def spans(self, c: tuple[int, int], r: tuple[int, int], cols: int) -> tuple[Span, Span, Span]:
        """[start, stop) along each axis of the whole tensor of channels c and rows r (each
        (start, count)) of the part, `cols` columns wide."""
        oc, orow, ocol = self.origin
        return (
            (c[0] + oc, c[0] + oc + c[1]),
            (r[0] + orow, r[0] + orow + r[1]),
            (ocol, ocol + cols),
        )


@dataclass(frozen=True)
class VectorShape:
    """A vector-unit layer: `kind` (KINDS), input plane c x h x w, output rows oh x ow.
    `x` is the input element type (an add's first operand), `out` the result's; `window` is
    set for pooling."""

    kind: str
    path: str
    c: int
    h: int
    w: int
    oh: int
    ow: int
    x: Elem
    out: Elem
    window: Window | None = None

    @property
    def operands(self) -> int:
        return 2 if self.kind == "add" else 1

    def in_rows(self, rows: int) -> int:
        """Input rows that `rows` output rows need at most (pooling windows overlap)."""
        if self.window is None:
            return rows
        return min(self.h, (rows - 1) * self.window.stride[0] + self.window.kernel[0])


@dataclass(frozen=True)
class RowSpan:
    """The input rows a tile of output rows reads, and the pooling padding it sees."""

    first: int
    count: int
    pad_top: int
    pad_bottom: int


def row_span(shape: VectorShape, r0: int, rs: int) -> RowSpan:
    """Input rows of output rows r0..r0+rs. A pooling tile keeps torch's padding only where it
    touches the input's top or bottom edge, and the window count equals `rs` (checked)."""
    win = shape.window
    if win is None:
        return RowSpan(r0, rs, 0, 0)
    (kh, _), (sh, _), (top, bottom, _, _) = win.kernel, win.stride, win.padding
    start, end = r0 * sh - top, (r0 + rs - 1) * sh - top + kh
    first, last = max(start, 0), min(end, shape.h)
    span = RowSpan(first, last - first, first - start, min(max(end - shape.h, 0), bottom))
    count = window_out(span.count, kh, sh, span.pad_top, span.pad_bottom, 1, win.ceil_mode)
    assert count == rs, f"a pooling tile of {rs} rows holds {count} windows"
    return span


@dataclass(frozen=True)
class VectorBuffers:
    """The double buffers (scratchpad) and the parameter words (accumulator) of a layer."""

    inputs: Pair
    outputs: Pair
    operand: int  # elements per operand in an input buffer (b follows a)
    params: int  # accumulator address of the parameter words

    @staticmethod
    def of(shape: VectorShape, plan: VectorPlan) -> VectorBuffers:
        rows = max(rs for _, rs in row_tiles(shape, plan.rows))
        operand = plan.c * shape.in_rows(rows) * shape.w
        inputs = Pair("sp", 0, shape.operands * operand)
        out_size = 0 if shape.kind == "copy" else plan.c * rows * shape.ow
        return VectorBuffers(inputs, Pair("sp", inputs.end, out_size), operand, 0)

    @property
    def sp_bytes(self) -> int:
        return self.outputs.end

    def fits(self, config: AccelConfig) -> bool:
        return self.sp_bytes <= config.scratchpad_bytes

    def check(self, config: AccelConfig, where: str) -> None:
        """DopantError unless the buffers fit `config` (a plan made for another machine)."""
        if not self.fits(config):
            raise DopantError(
                f"{where}: the tile plan needs {self.sp_bytes} scratchpad bytes, but "
                f"'{config.name}' has {config.scratchpad_bytes}; re-run tile."
            )

    def flipped(self, config: AccelConfig, words: int) -> VectorBuffers:
        """The layout mirrored to the top of both memories (`words` parameter words)."""
        sp = config.scratchpad_bytes
        params = config.accumulator_words - words
        return VectorBuffers(
            self.inputs.flipped(sp), self.outputs.flipped(sp), self.operand, params
        )


def param_words(kind: str) -> int:
    """Accumulator words of a layer's parameters: vadd's four, vrequant's two."""
    return {"add": 4, "requant": 2}.get(kind, 0)


def fitted(plan: VectorPlan, shape: VectorShape) -> VectorPlan:
    """`plan` cut down to the tensor (a concat's copies share a plan made for the largest)."""
    return VectorPlan(min(plan.c, shape.c), min(plan.rows, shape.oh), plan.cycles)


def row_tiles(shape: VectorShape, rows: int) -> list[tuple[int, int]]:
    """(r0, rs) of the row tiles. A ceil-mode pooling window that reaches past the bottom
    padding cannot be a tile alone (its rows are fewer than the kernel, so torch's rule counts
    no window), so it takes a row from the tile before it."""
    tiles = spans(shape.oh, rows)
    win = shape.window
    if win is None or len(tiles) < 2 or tiles[-1][1] > 1:
        return tiles
    (kh, _), (sh, _), (top, bottom, _, _) = win.kernel, win.stride, win.padding
    if (shape.oh - 1) * sh - top + kh <= shape.h + bottom:
        return tiles
    (r0, rs), last = tiles[-2], tiles[-1][0]
    return [*tiles[:-2], *([(r0, rs - 1)] if rs > 1 else []), (last - 1, 2)]


def tiles(shape: VectorShape, plan: VectorPlan) -> list[tuple[int, int, int, int]]:
    """(c0, cs, r0, rs) of every tile, channel tiles outside row tiles."""
    rows = row_tiles(shape, plan.rows)
    return [(c0, cs, r0, rs) for c0, cs in spans(shape.c, plan.c) for r0, rs in rows]


def load(plane: Plane, c0: int, cs: int, rows: RowSpan, local: int) -> Fields:
    """A block of cs channels by the tile's input rows, whole rows, from `plane`."""
    _, h, w = plane.dims
    return {
        "dram": plane.address(c0, rows.first),
        "local": local,
        "d": cs,
        "h": rows.count,
        "w": w,
        "sd": h * w,
        "sh": w,
        "sw": 1,
        "bits": plane.elem.field_bits,
        "signed": int(plane.elem.signed),
        "src_h": rows.count,
        "src_w": w,
    }


def store(plane: Plane, block: tuple[int, int, int], origin: tuple[int, int], local: int) -> Fields:
    """A dense d x h x w `block` to channels and rows from `origin` (c0, r0) of `plane`, which may
    be a part of a larger tensor (its `dims` give the strides)."""
    _, h, w = plane.dims
    d, rows, cols = block
    return {
        "local": local,
        "dram": plane.address(*origin),
        "d": d,
        "h": rows,
        "w": cols,
        "sd": h * w,
        "sh": w,
        "sw": 1,
        "bits": plane.elem.field_bits,
        "signed": int(plane.elem.signed),
    }


def vpool(shape: VectorShape, cs: int, rows: RowSpan, rs: int, io: tuple[int, int]) -> Fields:
    """Pooling of a cs x rows.count x w input tile into cs x rs x ow."""
    win = shape.window
    assert win is not None
    (kh, kw), (sh, sw), (_, _, left, right) = win.kernel, win.stride, win.padding
    return {
        "inp": io[0],
        "out": io[1],
        "c": cs,
        "ih": rows.count,
        "iw": shape.w,
        "oh": rs,
        "ow": shape.ow,
        "kh": kh,
        "kw": kw,
        "stride_h": sh,
        "stride_w": sw,
        "pad_top": rows.pad_top,
        "pad_bottom": rows.pad_bottom,
        "pad_left": left,
        "pad_right": right,
        "avg": int(win.avg),
        "zero_pad": int(win.zero_pad),
        "ceil_mode": int(win.ceil_mode),
        "count_include_pad": int(win.count_include_pad),
        "bits": shape.x.field_bits,
        "signed": int(shape.x.signed),
    }


def elementwise(
    shape: VectorShape,
    count: int,
    io: tuple[int, int, int],
    params: int,
    requant: tuple[int, int, int],
) -> tuple[str, Fields]:
    """vadd (a, b -> out) or vrequant (a -> out) of `count` elements with the parameter words
    at accumulator address `params`; `requant` is (lo, hi, rounding)."""
    a, b, out = io
    lo, hi, rounding = requant
    common = {
        "out": out,
        "count": count,
        "params": params,
        "lo": lo,
        "hi": hi,
        "rounding": rounding,
    }
    if shape.kind == "add":
        return "vadd", {"a": a, "b": b, **common}
    return "vrequant", {"inp": a, **common}


def params_load(kind: str, dram: int, local: int) -> Fields:
    """The layer's parameter words (param_words) into the accumulator at `local`."""
    words = param_words(kind)
    return acc_load(local, dram, (1, 1, words), (words, words, 1))
