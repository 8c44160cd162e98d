"""The instructions of a conv2d/linear tile, built one way for both passes: `tile` costs them
with `backend.costs.instruction_cost` to choose a plan, `convert-qnn-to-accel` emits them.

On-chip layout of a conv layer (double buffered, addresses from 0):

    scratchpad   [input 0][input 1][weights 0][weights 1]          (one element per byte)
    accumulator  [output 0][output 1][params 0][params 1]          (int32 words)

or mirrored to the top of both memories (`flipped`), so neighbouring layers overlap less.
An input buffer holds [c, in_rows(rows), in_cols] (padding included), a weight buffer
[n, c / groups, kh, kw], an output buffer [n, rows, ow] int32, a params buffer the tile's
requantization multipliers m0[0..n) then shift[0..n) (what store_acc reads at `params`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dopant.backend.image import element_bytes
from dopant.backend.target import AccelConfig, ceil_div
from dopant.passes.tiling.plan import ConvPlan, ConvShape
from dopant.support.errors import DopantError

Fields = dict[str, int]
ACC_BITS = 32


@dataclass(frozen=True)
class Pair:
    """A double buffer: two buffers of `size` side by side from `first` in `memory`."""

    memory: str  # "sp" or "acc"
    first: int
    size: int

    @property
    def addresses(self) -> tuple[int, int]:
        return self.first, self.first + self.size

    @property
    def end(self) -> int:
        return self.first + 2 * self.size

    def flipped(self, capacity: int) -> Pair:
        """The same buffers mirrored to the other end of a memory of `capacity`."""
        return Pair(self.memory, capacity - self.end, self.size)


@dataclass(frozen=True)
class ConvBuffers:
    """The double buffers of a conv layer and how much of each memory they take."""

    inputs: Pair
    weights: Pair
    outputs: Pair
    params: Pair

    @staticmethod
    def of(shape: ConvShape, plan: ConvPlan) -> ConvBuffers:
        channels = shape.tile_channels(plan.n, plan.c)
        inputs = Pair("sp", 0, channels * shape.in_rows(plan.rows) * shape.in_cols)
        w_size = plan.n * weight_channels(shape, plan.c) * shape.kh * shape.kw
        outputs = Pair("acc", 0, plan.n * plan.rows * shape.ow)
        return ConvBuffers(
            inputs=inputs,
            weights=Pair("sp", inputs.end, w_size),
            outputs=outputs,
            params=Pair("acc", outputs.end, 2 * plan.n),
        )

    @property
    def sp_bytes(self) -> int:
        return self.weights.end

    @property
    def acc_words(self) -> int:
        return self.params.end

    def flipped(self, config: AccelConfig) -> ConvBuffers:
        """The layout mirrored to the top of both memories (a layer placed there overlaps
        less with its neighbours, placed at the bottom)."""
        sp, acc = config.scratchpad_bytes, config.accumulator_words
        return ConvBuffers(
            self.inputs.flipped(sp),
            self.weights.flipped(sp),
            self.outputs.flipped(acc),
            self.params.flipped(acc),
        )

    def fits(self, config: AccelConfig) -> bool:
        return self.sp_bytes <= config.scratchpad_bytes and self.acc_words <= (
            config.accumulator_words
        )

    def check(self, config: AccelConfig, where: str) -> None:
        """DopantError unless the buffers fit `config` (a plan made for another machine)."""
        if not self.fits(config):
            raise DopantError(
                f"{where}: the tile plan needs {self.sp_bytes} scratchpad bytes and "
                f"{self.acc_words} accumulator words, but '{config.name}' has "
                f"{config.scratchpad_bytes} and {config.accumulator_words}; re-run tile."
            )


def weight_channels(shape: ConvShape, c: int) -> int:
    """Channels per output channel in a weight tile: the K-chunk, or a group's inputs."""
    return c if shape.groups == 1 else shape.cg


@dataclass(frozen=True)
class ConvTile:
    """One output tile (channels n0..n0+ns, rows r0..r0+rs) and one K-chunk of its input
    channels (c0..c0+cs; for a grouped conv, all input channels of the tile's groups)."""

    n0: int
    ns: int
    r0: int
    rs: int
    c0: int
    cs: int


def spans(total: int, step: int) -> list[tuple[int, int]]:
    """(start, size) of consecutive tiles of `step` covering `total`, the last one shorter."""
    return [(start, min(step, total - start)) for start in range(0, total, step)]


def output_tiles(shape: ConvShape, plan: ConvPlan) -> Iterator[tuple[int, int, int, int]]:
    """(n0, ns, r0, rs) of every output tile, in the plan's loop order."""
    n_spans, r_spans = spans(shape.n, plan.n), spans(shape.oh, plan.rows)
    if plan.order == "nrc":
        for n0, ns in n_spans:
            for r0, rs in r_spans:
                yield n0, ns, r0, rs
    else:
        for r0, rs in r_spans:
            for n0, ns in n_spans:
                yield n0, ns, r0, rs


def chunks(shape: ConvShape, plan: ConvPlan, n0: int, ns: int) -> list[tuple[int, int]]:
    """(c0, cs) of the K-chunks of an output tile: input channels accumulated one by one."""
    if shape.groups == 1:
        return spans(shape.c, plan.c)
    return [(n0 // shape.og * shape.cg, ns // shape.og * shape.cg)]


def array_bits(bits: int, widths: tuple[int, ...]) -> int:
    """The narrowest operand width the array fuses to that holds `bits`-bit values."""
    return next(w for w in widths if w >= bits)


def input_rows(shape: ConvShape, t: ConvTile) -> tuple[int, int]:
    """(first input row read, rows of padding above it) of a tile: its windows start at
    r0 * stride - pad_top, and rows above row 0 are zeros."""
    top = t.r0 * shape.stride[0] - shape.pad_top
    return max(top, 0), max(-top, 0)


def input_load(shape: ConvShape, t: ConvTile, local: int, dram: int) -> Fields:
    """The input block of a tile with its zero padding: the rows above row 0 or below the last
    row read as zeros, and `pad_left` zero columns."""
    first, pad = input_rows(shape, t)
    size = element_bytes(shape.x.bits)
    return {
        "dram": dram + (t.c0 * shape.h * shape.w + first * shape.w) * size,
        "local": local,
        "d": t.cs,
        "h": shape.in_rows(t.rs),
        "w": shape.in_cols,
        "sd": shape.h * shape.w,
        "sh": shape.w,
        "sw": 1,
        "bits": shape.x.field_bits,
        "signed": int(shape.x.signed),
        "pad_top": pad,
        "pad_left": shape.pad_left,
        "src_h": shape.h - first,
        "src_w": shape.w,
    }


def weight_load(shape: ConvShape, t: ConvTile, local: int, dram: int) -> Fields:
    """Weights [ns, channels, kh, kw] of the tile's outputs and K-chunk, from OIHW in DRAM."""
    taps = shape.kh * shape.kw
    channels = t.cs if shape.groups == 1 else shape.cg
    first_channel = t.c0 if shape.groups == 1 else 0
    return {
        "dram": dram + (t.n0 * shape.cg + first_channel) * taps * element_bytes(shape.weight.bits),
        "local": local,
        "d": t.ns,
        "h": channels,
        "w": taps,
        "sd": shape.cg * taps,
        "sh": taps,
        "sw": 1,
        "bits": shape.weight.field_bits,
        "signed": int(shape.weight.signed),
        "src_h": channels,
        "src_w": taps,
    }


def bias_load(shape: ConvShape, t: ConvTile, local: int, dram: int) -> Fields:
    """The tile's biases broadcast over its rows and columns (strides 0) into the accumulator."""
    return acc_load(local, dram + 4 * t.n0, (t.ns, t.rs, shape.ow), (1, 0, 0))


def params_load(shape: ConvShape, t: ConvTile, local: int, dram: int) -> Fields:
    """m0[n0..n0+ns) then shift[n0..n0+ns) from the layer's table m0[0..n), shift[0..n)."""
    return acc_load(local, dram + 4 * t.n0, (2, 1, t.ns), (shape.n, 0, 1))


def acc_load(
    local: int, dram: int, block: tuple[int, int, int], strides: tuple[int, int, int]
) -> Fields:
    """A d x h x w block of int32 words from DRAM (element strides) into the accumulator."""
    d, h, w = block
    sd, sh, sw = strides
    return {
        "to_acc": 1,
        "dram": dram,
        "local": local,
        "d": d,
        "h": h,
        "w": w,
        "sd": sd,
        "sh": sh,
        "sw": sw,
        "bits": ACC_BITS,
        "signed": 1,
        "src_h": h,
        "src_w": w,
    }


def conv(
    shape: ConvShape,
    t: ConvTile,
    config: AccelConfig,
    addresses: tuple[int, int, int],
    accumulate: bool,
) -> Fields:
    """The conv of one K-chunk: input and weight buffers (sp) into an output buffer (acc)."""
    inp, wgt, acc = addresses
    groups = 1 if shape.groups == 1 else t.ns // shape.og
    return {
        "inp": inp,
        "c_in": t.cs,
        "ih": shape.in_rows(t.rs),
        "iw": shape.in_cols,
        "wgt": wgt,
        "n": t.ns,
        "groups": groups,
        "kh": shape.kh,
        "kw": shape.kw,
        "stride_h": shape.stride[0],
        "stride_w": shape.stride[1],
        "dil_h": shape.dilation[0],
        "dil_w": shape.dilation[1],
        "oh": t.rs,
        "ow": shape.ow,
        "acc": acc,
        "accumulate": int(accumulate),
        "w_bits": array_bits(shape.weight.bits, config.weight_bits),
        "a_bits": array_bits(shape.x.bits, config.act_bits),
    }


def store_acc(
    shape: ConvShape,
    t: ConvTile,
    addresses: tuple[int, int],
    dram: int,
    requant: tuple[int, int, int],
) -> Fields:
    """Requantize the output buffer (multipliers at `params`) into NCHW DRAM; `requant` is
    (lo, hi, rounding)."""
    local, params = addresses
    lo, hi, rounding = requant
    plane = shape.oh * shape.ow
    return {
        "local": local,
        "dram": dram + (t.n0 * plane + t.r0 * shape.ow) * element_bytes(shape.out.bits),
        "d": t.ns,
        "h": t.rs,
        "w": shape.ow,
        "sd": plane,
        "sh": shape.ow,
        "sw": 1,
        "bits": shape.out.field_bits,
        "signed": int(shape.out.signed),
        "params": params,
        "lo": lo,
        "hi": hi,
        "rounding": rounding,
    }


def tile_counts(shape: ConvShape, plan: ConvPlan) -> tuple[int, int, int]:
    """Output-channel tiles, row tiles and K-chunks per output tile."""
    k_chunks = ceil_div(shape.c, plan.c) if shape.groups == 1 else 1
    return ceil_div(shape.n, plan.n), ceil_div(shape.oh, plan.rows), k_chunks
