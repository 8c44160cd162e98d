"""What each instruction does to the memories: the functional semantics of the ISA.

Each function implements one instruction exactly as its docstring in `dialects.isa` states it,
vectorized over the whole block and over the images of a batch (no Python loop over elements or
images): every memory has a leading batch axis (`runtime.memory`), each image its own machine,
and a run of one image is a batch of one, so these functions are the only definition of what an
instruction does. Integer arithmetic is never
re-implemented here: requantization, the residual add and rounding divisions come from
`runtime.intops`, window geometry and pooling from `runtime.kernels`, as in the reference
interpreter, so the simulator and `runtime.reference` agree bit for bit by construction.

Conventions read from fields:
- requantization parameters live in the accumulator at `params`: m0[0..n) then shift[0..n)
  (n = depth slices for store_acc, 1 for vrequant, 2 for vadd, whose words are therefore
  params+0: m0 of `a`, params+1: m0 of `b`, params+2: shift of `a`, params+3: shift of `b`);
- `rounding` 0 is gemmlowp's double rounding, 1 the single rounding (`intops.ROUNDINGS`);
- the vector ops and store_acc carry no zero points: every integer the machine adds or rescales
  has zero point 0, the contract `runtime.reference` documents for integer tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dopant.backend.image import element_bytes, storage_range
from dopant.runtime import intops, kernels
from dopant.runtime.memory import Memories, check_fits, dram_block, which_image
from dopant.runtime.queues import SimulationError

Fields = dict[str, int]

# Float sums of integers are exact while every partial sum stays below 2^(mantissa bits): 2^24
# for float32, 2^53 for float64. The cheapest exact type does a convolution (BLAS in any order).
_EXACT_FLOATS = ((1 << 24, np.float32), (1 << 53, np.float64))


def _require_positive(f: Fields, *names: str) -> None:
    for name in names:
        if f[name] < 1:
            raise SimulationError(f"field {name}={f[name]} must be at least 1")


def _rounding(f: Fields) -> str:
    """The 1-bit `rounding` field: 0 gemmlowp, 1 single (the order of `intops.ROUNDINGS`)."""
    return intops.ROUNDINGS[f["rounding"]]


def load(f: Fields, mem: Memories) -> None:
    """DRAM -> sp/acc: a d x h x w block, zero outside the source plane (padding)."""
    d, h, w = f["d"], f["h"], f["w"]
    if f["to_acc"]:
        dest = mem.acc_span("local", f["local"], d, h, w)
    elif element_bytes(f["bits"]) != 1:
        raise SimulationError(
            f"field bits={f['bits']}: the scratchpad holds elements of at most 8 bits"
        )
    else:
        dest = mem.sp_span("local", f["local"], d, h, w)
    # Rows pad_top .. pad_top + src_h (and columns likewise) come from DRAM; the rest is zero.
    r0, c0 = f["pad_top"], f["pad_left"]
    r1, c1 = min(h, r0 + f["src_h"]), min(w, c0 + f["src_w"])
    if (r0, c0, r1, c1) != (0, 0, h, w):
        dest[...] = 0
    if r1 <= r0 or c1 <= c0:
        return
    shape, strides = (d, r1 - r0, c1 - c0), (f["sd"], f["sh"], f["sw"])
    dest[:, :, r0:r1, c0:c1] = dram_block(
        mem.dram, f["dram"], shape, strides, f["bits"], bool(f["signed"])
    )


def store(f: Fields, mem: Memories) -> None:
    """sp -> DRAM: a dense d x h x w block to strided DRAM elements."""
    d, h, w = f["d"], f["h"], f["w"]
    block = mem.sp_span("local", f["local"], d, h, w)
    _write_block(f, mem, block)


def _write_block(f: Fields, mem: Memories, block: np.ndarray) -> None:
    bits, signed = f["bits"], bool(f["signed"])
    check_fits(block, bits, signed, "the stored block")
    strides = (f["sd"], f["sh"], f["sw"])
    dram_block(mem.dram, f["dram"], block.shape[1:], strides, bits, signed)[...] = block


def store_acc(f: Fields, mem: Memories) -> None:
    """acc -> DRAM through the requantizer: depth slice i uses (m0[i], shift[i])."""
    d, h, w = f["d"], f["h"], f["w"]
    block = mem.acc_span("local", f["local"], d, h * w)
    params = mem.acc_span("params", f["params"], 2 * d)
    m0, shift = params[:, :d, None], params[:, d:, None]
    q = intops.multiply_by_quantized_multiplier(block, m0, shift, _rounding(f))
    _write_block(f, mem, np.clip(q, f["lo"], f["hi"]).reshape(mem.batch, d, h, w))


def _magnitude(values: np.ndarray) -> int:
    """max |values| without the temporary array np.abs makes."""
    return max(-int(values.min(initial=0)), int(values.max(initial=0)))


def integer_conv(
    x: np.ndarray,
    w: np.ndarray,
    strides: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> np.ndarray:
    """The exact integer convolution of each image of x [batch, c_in, ih, iw] with w
    [n, c_in/groups, kh, kw], no padding, as int64 [batch, n, oh, ow].

    Through float BLAS when every partial sum is exactly representable, below 2^24 for
    float32 and 2^53 for float64 (bound: depth * max|x| * max|w|); the order in which BLAS sums
    (or fuses a multiply-add) cannot change an exact result. float32 (sgemm, half the bytes)
    covers 8-bit operands up to depths of about 2^9, a tile of 16 channels of 3x3 with room to
    spare; float64 up to 2^37, so in practice always. Otherwise the same kernel on int64, which
    is exact while the sums fit 63 bits.
    """
    depth = w[0].size
    peak = depth * _magnitude(x) * _magnitude(w)
    if peak >= 1 << 63:
        raise SimulationError("the convolution's integer sums may overflow 64 bits")
    dtype = next((t for limit, t in _EXACT_FLOATS if peak < limit), np.int64)
    y = kernels.conv2d(
        x.astype(dtype), w.astype(dtype), None, strides, (0, 0, 0, 0), dilation, groups
    )
    return y.astype(np.int64, copy=False)  # exact integers: the cast from float rounds nothing


def _check_operand(values: np.ndarray, bits: int, what: str) -> None:
    """BitFusion fuses bricks for signed or unsigned operands of `bits`: refuse wider values."""
    lo, hi = -(1 << (bits - 1)), (1 << bits) - 1
    if values.size and (values.min() < lo or values.max() > hi):
        raise SimulationError(
            f"the {what} hold values in [{values.min()}, {values.max()}], wider than the "
            f"{bits}-bit operands the array was set to ([{lo}, {hi}])"
            f"{which_image((values < lo) | (values > hi))}"
        )


def conv(f: Fields, mem: Memories) -> None:
    """acc[n, y, x] (+)= the grouped, strided, dilated convolution of an sp tile."""
    _require_positive(f, "c_in", "n", "groups", "kh", "kw", "oh", "ow")
    _require_positive(f, "stride_h", "stride_w", "dil_h", "dil_w", "w_bits", "a_bits")
    c_in, n, groups = f["c_in"], f["n"], f["groups"]
    if c_in % groups or n % groups:
        raise SimulationError(f"field groups={groups} does not divide c_in={c_in} and n={n}")
    # The tile may hold more rows/columns than the outputs read; use just those they read.
    need_h = (f["oh"] - 1) * f["stride_h"] + (f["kh"] - 1) * f["dil_h"] + 1
    need_w = (f["ow"] - 1) * f["stride_w"] + (f["kw"] - 1) * f["dil_w"] + 1
    if f["ih"] < need_h or f["iw"] < need_w:
        raise SimulationError(
            f"the {f['ih']}x{f['iw']} input tile is smaller than the {need_h}x{need_w} its "
            "outputs read"
        )
    batch, ih, iw = mem.batch, f["ih"], f["iw"]
    x = mem.sp_span("inp", f["inp"], c_in, ih, iw)[:, :, :need_h, :need_w]
    cg, kh, kw = c_in // groups, f["kh"], f["kw"]
    wgt = mem.sp_span("wgt", f["wgt"], n * cg * kh * kw)
    _check_operand(x, f["a_bits"], "activations")
    _check_operand(wgt, f["w_bits"], "weights")
    out = mem.acc_span("acc", f["acc"], n * f["oh"] * f["ow"])
    strides, dilation = (f["stride_h"], f["stride_w"]), (f["dil_h"], f["dil_w"])
    weights = wgt.reshape(batch, n, cg, kh, kw)
    if (wgt == wgt[:1]).all():
        # Weights come from constants, the same in every image: one GEMM for the whole batch.
        y = integer_conv(x, weights[0], strides, dilation, groups)
    else:
        parts = [
            integer_conv(x[i : i + 1], weights[i], strides, dilation, groups) for i in range(batch)
        ]
        y = np.concatenate(parts)
    y = y.reshape(batch, -1)
    if f["accumulate"]:
        y += out
    check_fits(y, 32, True, "the accumulated tile")
    out[...] = y


def vadd(f: Fields, mem: Memories) -> None:
    """out = the rescaled residual add of a and b (TFLite int8 ADD, zero points 0)."""
    count = f["count"]
    a = mem.sp_span("a", f["a"], count)
    b = mem.sp_span("b", f["b"], count)
    out = mem.sp_span("out", f["out"], count)
    # params: m0 of a, m0 of b, shift of a, shift of b (m0[0..2) then shift[0..2)), per image.
    params = mem.acc_span("params", f["params"], 4)
    m0_a, m0_b, shift_a, shift_b = (params[:, i : i + 1] for i in range(4))
    q = intops.add_rescaled(
        a, b, (0, 0, 0), (m0_a, shift_a), (m0_b, shift_b), f["lo"], f["hi"], _rounding(f)
    )
    out[...] = q


def vrequant(f: Fields, mem: Memories) -> None:
    """out = clamp(MBQM(inp, m0, shift), lo, hi) with one multiplier at params, params + 1."""
    count = f["count"]
    inp = mem.sp_span("inp", f["inp"], count)
    out = mem.sp_span("out", f["out"], count)
    params = mem.acc_span("params", f["params"], 2)
    q = intops.multiply_by_quantized_multiplier(inp, params[:, :1], params[:, 1:], _rounding(f))
    out[...] = np.clip(q, f["lo"], f["hi"])


def vpool(f: Fields, mem: Memories) -> None:
    """Max or average pooling of a c x ih x iw tile, torch's window and divisor rules."""
    _require_positive(f, "kh", "kw", "stride_h", "stride_w")
    c, ih, iw = f["c"], f["ih"], f["iw"]
    x = mem.sp_span("inp", f["inp"], c, ih, iw)
    pool = kernels.Pool(
        (f["kh"], f["kw"]),
        (f["stride_h"], f["stride_w"]),
        (f["pad_top"], f["pad_bottom"], f["pad_left"], f["pad_right"]),
        bool(f["ceil_mode"]),
    )
    if f["avg"]:
        # A window without input elements sums to 0 over divisor 0; it averages to 0.
        y = kernels.avg_pool2d(x, pool, bool(f["count_include_pad"]))
    else:
        y = kernels.max_pool2d(x, pool, bool(f["zero_pad"]))
        # kernels pads with the int32 minimum; the ISA pads with the storage minimum. The two
        # agree on every window holding an input element (inputs are >= the storage minimum),
        # and the floor below turns a window wholly in padding into the storage minimum.
        y = np.maximum(y, storage_range(f["bits"], bool(f["signed"]))[0])
    if y.shape[2:] != (f["oh"], f["ow"]):
        raise SimulationError(
            f"fields oh={f['oh']}, ow={f['ow']} differ from the {y.shape[2]}x{y.shape[3]} "
            "windows torch's output-size rule gives"
        )
    mem.sp_span("out", f["out"], c * f["oh"] * f["ow"])[...] = y.reshape(mem.batch, -1)


OPS: dict[str, Callable[[Fields, Memories], None]] = {
    "load": load,
    "conv": conv,
    "store": store,
    "store_acc": store_acc,
    "vadd": vadd,
    "vrequant": vrequant,
    "vpool": vpool,
}
