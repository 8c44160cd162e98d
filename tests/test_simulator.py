"""The functional simulator on hand-written programs: every instruction matched bit for bit
against independent numpy/torch arithmetic, `runtime.intops`, and the `qnn` reference
interpreter; token order, deadlocks, bounds, and the Program.run entry points."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from xdsl.dialects.builtin import ModuleOp
from xdsl.parser import Parser

from dopant.backend.asm import parse_assembly
from dopant.backend.binary import save_program
from dopant.backend.presets import preset
from dopant.compiler.cli.accel import main_profile, main_run
from dopant.dialects.context import make_context
from dopant.dialects.isa import Instruction
from dopant.runtime import intops, reference
from dopant.runtime.program import LayerRange, Program, Segment, TensorDesc
from dopant.runtime.semantics import integer_conv
from dopant.runtime.simulator import SimulationError
from dopant.support.errors import InputError

SMALL8 = preset("small8")
RNG = np.random.default_rng(7)
IDENTITY = np.array([1 << 30, 1])  # (m0, shift) of the multiplier 1.0 = 2^30 * 2^(1 - 31)


def asm(text: str) -> list[Instruction]:
    return parse_assembly(textwrap.dedent(text))


def program(
    code: Sequence[Instruction],
    segments: Sequence[Segment] = (),
    inputs: Sequence[TensorDesc] = (),
    outputs: Sequence[TensorDesc] = (),
) -> Program:
    return Program(
        config_hash=SMALL8.stable_hash(),
        config=SMALL8.to_dict(),
        instructions=tuple(code),
        segments=tuple(segments),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        layers=(LayerRange("all", 0, len(code)),),
        dram_bytes=4096,
    )


def tensor(
    name: str, shape: tuple[int, ...], dram: int, bits: int = 8, signed: bool = True
) -> TensorDesc:
    return TensorDesc(name, shape, dram, bits, signed, 1.0, 0)


def identities(channels: int) -> np.ndarray:
    """Per-channel parameters m0[0..channels) then shift[0..channels) of the multiplier 1.0."""
    return np.repeat(IDENTITY, channels)


def naive_conv(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int],
    dil: tuple[int, int],
    groups: int,
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Integer convolution as an explicit sum over output channels and kernel taps (independent
    of runtime.kernels): x [c, h, w], w [n, c/groups, kh, kw] -> [n, oh, ow] int64."""
    n, cg, kh, kw = w.shape
    (oh, ow), (sh, sw) = out_hw, stride
    y = np.zeros((n, oh, ow), np.int64)
    for o in range(n):
        first = (o // (n // groups)) * cg
        for c in range(cg):
            for i in range(kh):
                for j in range(kw):
                    r, s = i * dil[0], j * dil[1]
                    patch = x[
                        first + c, r : r + (oh - 1) * sh + 1 : sh, s : s + (ow - 1) * sw + 1 : sw
                    ]
                    y[o] += int(w[o, c, i, j]) * patch.astype(np.int64)
    return y


# ---- convolution and requantization -------------------------------------------------------


@pytest.mark.parametrize("rounding", [0, 1])
def test_matmul_with_per_channel_requantization_matches_numpy_and_intops(rounding: int) -> None:
    m, k, n = 6, 20, 5  # a matmul is a 1x1 conv over a 1 x m plane: x [k, 1, m], w [n, k]
    x = RNG.integers(-128, 128, (k, m))
    w = RNG.integers(-128, 128, (n, k))
    m0, shift = intops.quantize_multipliers(RNG.uniform(0.001, 0.02, n))
    code = asm(f"""
        load dram=0 local=0 d={k} h=1 w={m} sd={m} sh={m} sw=1 bits=8 signed=1 src_h=1 src_w={m} signal=0b1
        load dram=256 local=200 d={n} h=1 w={k} sd={k} sh={k} sw=1 bits=8 signed=1 src_h=1 src_w={k} signal=0b10
        load to_acc=1 dram=512 local=100 d=1 h=1 w={2 * n} sw=1 bits=32 signed=1 src_h=1 src_w={2 * n} signal=0b100
        conv wait=0b11 c_in={k} ih=1 iw={m} wgt=200 n={n} groups=1 kh=1 kw=1 stride_h=1 stride_w=1 dil_h=1 dil_w=1 oh=1 ow={m} w_bits=8 a_bits=8 signal=0b1000
        store_acc wait=0b1100 dram=1024 d={n} h=1 w={m} sd={m} sh={m} sw=1 bits=8 signed=1 params=100 lo=-100 hi=127 rounding={rounding}
    """)
    segments = [
        Segment(256, 8, True, w.reshape(-1)),
        Segment(512, 32, True, np.concatenate([m0, shift])),
    ]
    prog = program(code, segments, [tensor("x", (k, m), 0)], [tensor("y", (n, m), 1024)])
    (y,) = prog.run_raw(x).raw_outputs
    acc = w @ x
    expected = intops.requantize(
        acc, 0, 0, m0, shift, -100, 127, intops.ROUNDINGS[rounding], axis=0
    )
    np.testing.assert_array_equal(y, expected)
    # Independently of intops: within one step of the exact real product, then clamped.
    real = np.clip(np.round(acc * (m0 * 2.0 ** (shift - 31))[:, None]), -100, 127)
    assert np.abs(y - real).max() <= 1 and y.min() >= -100


def test_conv_tile_with_load_padding_stride_and_dilation_matches_a_naive_conv() -> None:
    c, h, w, n = 3, 6, 7, 4
    x = RNG.integers(-128, 128, (c, h, w))
    wgt = RNG.integers(-128, 128, (n, c, 3, 3))
    # The load pads 2 rows above and 1 column left, and its block runs past the source's bottom
    # and right edges too (zeros there). Dilation (2, 1), stride (1, 2).
    bh, bw = h + 3, w + 2
    oh, ow = bh - 4, (bw - 3) // 2 + 1
    code = asm(f"""
        load dram=0 local=0 d={c} h={bh} w={bw} sd={h * w} sh={w} sw=1 bits=8 signed=1 pad_top=2 pad_left=1 src_h={h} src_w={w} signal=0b1
        load dram=512 local=400 d=1 h=1 w={wgt.size} sw=1 bits=8 signed=1 src_h=1 src_w={wgt.size} signal=0b10
        conv wait=0b11 c_in={c} ih={bh} iw={bw} wgt=400 n={n} groups=1 kh=3 kw=3 stride_h=1 stride_w=2 dil_h=2 dil_w=1 oh={oh} ow={ow} w_bits=8 a_bits=8 signal=0b100
        load to_acc=1 dram=1024 local=1000 d=1 h=1 w={2 * n} sw=1 bits=32 signed=1 src_h=1 src_w={2 * n} signal=0b1000
        store_acc wait=0b1100 dram=2048 d={n} h={oh} w={ow} sd={oh * ow} sh={ow} sw=1 bits=32 signed=1 params=1000 lo=-32768 hi=32767
    """)
    # store_acc of 32-bit elements with the multiplier 1.0 shows the accumulators themselves.
    segments = [Segment(512, 8, True, wgt.reshape(-1)), Segment(1024, 32, True, identities(n))]
    prog = program(
        code, segments, [tensor("x", (c, h, w), 0)], [tensor("y", (n, oh, ow), 2048, 32)]
    )
    (y,) = prog.run_raw(x).raw_outputs
    padded = np.zeros((c, bh, bw), np.int64)
    padded[:, 2 : 2 + h, 1 : 1 + w] = x
    expected = naive_conv(padded, wgt, (1, 2), (2, 1), 1, (oh, ow))
    np.testing.assert_array_equal(y, np.clip(expected, -32768, 32767))


@pytest.mark.parametrize(("c_in", "n", "groups"), [(6, 4, 2), (5, 5, 5), (4, 8, 4)])
def test_grouped_and_depthwise_convs_accumulate_onto_the_accumulator(
    c_in: int, n: int, groups: int
) -> None:
    x = RNG.integers(-128, 128, (c_in, 5, 5))
    wgt = RNG.integers(-128, 128, (n, c_in // groups, 3, 3))
    start = RNG.integers(-(1 << 20), 1 << 20, (n, 3, 3))
    code = asm(f"""
        load dram=0 local=0 d={c_in} h=5 w=5 sd=25 sh=5 sw=1 bits=8 signed=1 src_h=5 src_w=5 signal=0b1
        load dram=512 local=300 d=1 h=1 w={wgt.size} sw=1 bits=8 signed=1 src_h=1 src_w={wgt.size} signal=0b10
        load to_acc=1 dram=1024 d={n} h=3 w=3 sd=9 sh=3 sw=1 bits=32 signed=1 src_h=3 src_w=3 signal=0b100
        conv wait=0b111 c_in={c_in} ih=5 iw=5 wgt=300 n={n} groups={groups} kh=3 kw=3 stride_h=1 stride_w=1 dil_h=1 dil_w=1 oh=3 ow=3 accumulate=1 w_bits=8 a_bits=8 signal=0b1000
        load to_acc=1 dram=2048 local=500 d=1 h=1 w={2 * n} sw=1 bits=32 signed=1 src_h=1 src_w={2 * n} signal=0b10000
        store_acc wait=0b11000 dram=3072 d={n} h=3 w=3 sd=9 sh=3 sw=1 bits=32 signed=1 params=500 lo=-32768 hi=32767
    """)
    segments = [
        Segment(512, 8, True, wgt.reshape(-1)),
        Segment(1024, 32, True, start.reshape(-1)),
        Segment(2048, 32, True, identities(n)),
    ]
    prog = program(
        code, segments, [tensor("x", (c_in, 5, 5), 0)], [tensor("y", (n, 3, 3), 3072, 32)]
    )
    (y,) = prog.run_raw(x).raw_outputs
    expected = start + naive_conv(x, wgt, (1, 1), (1, 1), groups, (3, 3))
    np.testing.assert_array_equal(y, np.clip(expected, -32768, 32767))


def test_integer_conv_switches_to_int64_where_float64_would_round() -> None:
    # Nine products near 2^26 * 2^26 sum to about 9 * 2^52 > 2^53: float64 would round them.
    x = np.full((1, 1, 3, 3), (1 << 26) + 1, np.int64)  # a batch of one image
    w = np.full((1, 1, 3, 3), (1 << 26) - 1, np.int64)
    w[0, 0, 0, 0] += 2
    got = integer_conv(x, w, (1, 1), (1, 1), 1)
    exact = sum(int(a) * int(b) for a, b in zip(x.reshape(-1), w.reshape(-1), strict=True))
    assert got.dtype == np.int64 and int(got[0, 0, 0, 0]) == exact
    assert int(float(exact)) != exact  # float64 cannot hold this sum


def test_sub_byte_operands_load_signed_and_unsigned_and_wider_values_are_refused() -> None:
    x = RNG.integers(0, 16, (4, 1, 3))  # uint4 activations
    w = RNG.integers(-8, 8, (2, 4))  # int4 weights
    code = asm("""
        load dram=0 local=0 d=4 h=1 w=3 sd=3 sh=3 sw=1 bits=4 src_h=1 src_w=3 signal=0b1
        load dram=64 local=100 d=1 h=1 w=8 sw=1 bits=4 signed=1 src_h=1 src_w=8 signal=0b10
        conv wait=0b11 c_in=4 ih=1 iw=3 wgt=100 n=2 groups=1 kh=1 kw=1 stride_h=1 stride_w=1 dil_h=1 dil_w=1 oh=1 ow=3 w_bits=4 a_bits=4 signal=0b100
        load to_acc=1 dram=128 local=50 d=1 h=1 w=4 sw=1 bits=32 signed=1 src_h=1 src_w=4 signal=0b1000
        store_acc wait=0b1100 dram=256 d=2 h=1 w=3 sd=3 sh=3 sw=1 bits=32 signed=1 params=50 lo=-32768 hi=32767
    """)
    params = Segment(128, 32, True, identities(2))
    inputs, outputs = (
        [tensor("x", (4, 1, 3), 0, bits=4, signed=False)],
        [tensor("y", (2, 3), 256, 32)],
    )
    prog = program(code, [Segment(64, 4, True, w.reshape(-1)), params], inputs, outputs)
    np.testing.assert_array_equal(prog.run_raw(x).raw_outputs[0], w @ x.reshape(4, 3))
    wide = program(code, [Segment(64, 8, True, np.full(8, 100)), params], inputs, outputs)
    message = r"instruction 2 \(conv on compute\): the weights hold values in \[100, 100\], wider than the 4-bit"
    with pytest.raises(SimulationError, match=message):
        wide.run_raw(x)


def test_accumulator_overflow_is_an_error_not_a_wrap() -> None:
    code = asm("""
        load dram=0 d=1 h=1 w=1 sw=1 bits=8 signed=1 src_h=1 src_w=1 signal=0b1
        load to_acc=1 dram=8 d=1 h=1 w=1 sw=1 bits=32 signed=1 src_h=1 src_w=1 signal=0b10
        conv wait=0b11 c_in=1 ih=1 iw=1 n=1 groups=1 kh=1 kw=1 stride_h=1 stride_w=1 dil_h=1 dil_w=1 oh=1 ow=1 accumulate=1 w_bits=8 a_bits=8
    """)
    segments = [
        Segment(0, 8, True, np.array([127])),
        Segment(8, 32, True, np.array([(1 << 31) - 10])),
    ]
    # 127 * 127 + 2^31 - 10 = 2147499767 does not fit int32.
    message = r"instruction 2 \(conv on compute\): the accumulated tile holds values in \[2147499767, 2147499767\]"
    with pytest.raises(SimulationError, match=message):
        program(code, segments).run_raw()


# ---- the vector unit ------------------------------------------------------------------------


def test_vadd_reads_m0_a_m0_b_shift_a_shift_b_and_matches_add_rescaled() -> None:
    a = np.array([10, -10, 127, 0, -128, 55, 3, -77])
    b = np.array([7, -8, 127, -1, -128, -60, 4, 100])
    (m_a, m_b), (s_a, s_b) = intops.quantize_multipliers(np.array([0.1 / 0.3, 0.2 / 0.3]))
    assert (s_a, s_b) == (-1, 0)  # distinct shifts, so a swapped layout gives other values
    code = asm("""
        load dram=0 d=1 h=1 w=8 sw=1 bits=8 signed=1 src_h=1 src_w=8 signal=0b1
        load dram=8 local=8 d=1 h=1 w=8 sw=1 bits=8 signed=1 src_h=1 src_w=8 signal=0b10
        load to_acc=1 dram=16 d=1 h=1 w=4 sw=1 bits=32 signed=1 src_h=1 src_w=4 signal=0b100
        vadd wait=0b111 a=0 b=8 out=16 count=8 lo=-128 hi=127 signal=0b1000
        store wait=0b1000 local=16 dram=64 d=1 h=1 w=8 sw=1 bits=8 signed=1
    """)
    segments = [Segment(16, 32, True, np.array([m_a, m_b, s_a, s_b]))]
    prog = program(
        code, segments, [tensor("a", (8,), 0), tensor("b", (8,), 8)], [tensor("y", (8,), 64)]
    )
    (y,) = prog.run_raw(a, b).raw_outputs
    expected = intops.add_rescaled(a, b, (0, 0, 0), (m_a, s_a), (m_b, s_b), -128, 127)
    np.testing.assert_array_equal(y, expected)
    # 10 * 0.1 + 7 * 0.2 = 2.4 = 8 * 0.3; -2.6 / 0.3 = -8.67 -> -9; 38.1 / 0.3 saturates.
    assert y[:3].tolist() == [8, -9, 127]


@pytest.mark.parametrize(("rounding", "expected"), [(0, [2, 20, -20, -1]), (1, [1, 20, -20, -1])])
def test_vrequant_rounds_as_named_and_clamps(rounding: int, expected: list[int]) -> None:
    # M = 0.25 is (2^30, -1). x = 5: gemmlowp rounds 2.5 -> 3 (ties up), then 3 / 2 -> 2 (ties
    # away from zero); single rounds 1.25 once -> 1. x = -5: gemmlowp -2.5 -> -2, -2 / 2 -> -1;
    # single floor(-1.25 + 0.5) = -1. 100 * 0.25 = 25 and -25 clamp to [-20, 20].
    code = asm(f"""
        load dram=0 d=1 h=1 w=4 sw=1 bits=8 signed=1 src_h=1 src_w=4 signal=0b1
        load to_acc=1 dram=8 local=10 d=1 h=1 w=2 sw=1 bits=32 signed=1 src_h=1 src_w=2 signal=0b10
        vrequant wait=0b11 out=4 count=4 params=10 lo=-20 hi=20 rounding={rounding} signal=0b100
        store wait=0b100 local=4 dram=32 d=1 h=1 w=4 sw=1 bits=8 signed=1
    """)
    segments = [Segment(8, 32, True, np.array([1 << 30, -1]))]
    prog = program(code, segments, [tensor("x", (4,), 0)], [tensor("y", (4,), 32)])
    (y,) = prog.run_raw(np.array([5, 100, -100, -5])).raw_outputs
    assert y.tolist() == expected


# kernel, stride, padding (top, bottom, left, right), ceil_mode, count_include_pad
Pool = tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], bool, bool]
POOLS: list[Pool] = [
    ((3, 3), (2, 2), (1, 1, 1, 1), False, True),
    ((3, 3), (2, 2), (1, 1, 1, 1), True, False),
    ((2, 3), (2, 1), (0, 0, 1, 1), True, True),
    ((2, 2), (3, 3), (1, 1, 0, 0), True, False),
]


def _pool_program(
    shape: tuple[int, int, int], out_hw: tuple[int, int], pool: Pool, avg: int, zero_pad: int = 0
) -> Program:
    (kh, kw), (sh, sw), (pt, pb, pl, pr), ceil, include = pool
    (c, ih, iw), (oh, ow) = shape, out_hw
    code = asm(f"""
        load dram=0 d={c} h={ih} w={iw} sd={ih * iw} sh={iw} sw=1 bits=8 signed=1 src_h={ih} src_w={iw} signal=0b1
        vpool wait=0b1 out=500 c={c} ih={ih} iw={iw} oh={oh} ow={ow} kh={kh} kw={kw} stride_h={sh} stride_w={sw} pad_top={pt} pad_bottom={pb} pad_left={pl} pad_right={pr} avg={avg} zero_pad={zero_pad} ceil_mode={int(ceil)} count_include_pad={int(include and avg)} bits=8 signed=1 signal=0b10
        store wait=0b10 local=500 dram=1024 d={c} h={oh} w={ow} sd={oh * ow} sh={ow} sw=1 bits=8 signed=1
    """)
    return program(code, (), [tensor("x", shape, 0)], [tensor("y", (c, oh, ow), 1024)])


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("avg", [0, 1])
def test_pooling_matches_torch_with_ceil_mode_and_count_include_pad(pool: Pool, avg: int) -> None:
    kernel, stride, (pt, pb, pl, pr), ceil, include = pool
    assert pt == pb and pl == pr  # torch pads symmetrically
    x = RNG.integers(-128, 128, (3, 7, 8))
    xt = torch.from_numpy(x.astype(np.float64))[None]
    if avg:
        ref = F.avg_pool2d(xt, kernel, stride, (pt, pl), ceil, include)[0].numpy()
        expected = np.sign(ref) * np.floor(np.abs(ref) + 0.5)  # half away from zero
    else:
        expected = F.max_pool2d(xt, kernel, stride, (pt, pl), 1, ceil)[0].numpy()
    prog = _pool_program((3, 7, 8), expected.shape[1:], pool, avg)
    np.testing.assert_array_equal(prog.run_raw(x).raw_outputs[0], expected.astype(np.int64))


def test_max_pool_pads_with_the_storage_minimum_or_with_zeros() -> None:
    x = np.full((1, 2, 2), -5)
    pool: Pool = ((2, 2), (1, 1), (1, 1, 1, 1), False, False)
    assert (_pool_program((1, 2, 2), (3, 3), pool, 0).run_raw(x).raw_outputs[0] == -5).all()
    zero_padded = _pool_program((1, 2, 2), (3, 3), pool, 0, zero_pad=1)
    # Every 2x2 window but the middle one holds a padding zero, which beats -5.
    assert zero_padded.run_raw(x).raw_outputs[0].tolist() == [[[0, 0, 0], [0, -5, 0], [0, 0, 0]]]
    # Padding wider than torch allows (1 > 1 // 2) leaves 1x1 windows wholly in padding: they
    # give the storage minimum (the loader refuses such code; the semantics still define it).
    wide: Pool = ((1, 1), (1, 1), (1, 1, 1, 1), False, False)
    y = _pool_program((1, 2, 2), (4, 4), wide, 0).run_raw(x).raw_outputs[0]
    assert y[0, 1:3, 1:3].tolist() == [[-5, -5], [-5, -5]] and (y[0, 0] == -128).all()


# ---- loads and stores -------------------------------------------------------------------------


def test_strided_gather_depth_broadcast_load_and_a_transposing_store() -> None:
    x = RNG.integers(0, 256, (4, 6))  # uint8
    # Load every other column of rows 1..2, the two rows repeated over 3 depth slices (sd = 0);
    # store the 3 x 2 x 3 block transposed: (i, j, k) goes to DRAM element k*6 + j*3 + i.
    code = asm("""
        load dram=6 d=3 h=2 w=3 sd=0 sh=6 sw=2 bits=8 src_h=2 src_w=3 signal=0b1
        store wait=0b1 dram=64 d=3 h=2 w=3 sd=1 sh=3 sw=6 bits=8
    """)
    outputs = [tensor("y", (3, 2, 3), 64, signed=False)]
    prog = program(code, (), [tensor("x", (4, 6), 0, signed=False)], outputs)
    (y,) = prog.run_raw(x).raw_outputs
    block = np.broadcast_to(x[1:3, ::2], (3, 2, 3))
    np.testing.assert_array_equal(y.reshape(-1), block.transpose(2, 1, 0).reshape(-1))


def test_a_store_refuses_values_its_elements_cannot_hold() -> None:
    code = asm("""
        load d=1 h=1 w=2 sw=1 bits=8 src_h=1 src_w=2 signal=0b1
        store wait=0b1 dram=8 d=1 h=1 w=2 sw=1 bits=8 signed=1
    """)
    prog = program(code, (), [tensor("x", (2,), 0, signed=False)], [tensor("y", (2,), 8)])
    message = r"instruction 1 \(store on store\): the stored block holds values in \[3, 200\], which do not fit int8"
    with pytest.raises(SimulationError, match=message):
        prog.run_raw(np.array([3, 200]))


def test_accesses_outside_a_memory_name_the_instruction_and_field() -> None:
    past_dram = asm("load dram=4000 d=1 h=1 w=200 sw=1 bits=8 src_h=1 src_w=200")
    message = (
        r"instruction 0 \(load on load\): DRAM bytes \[4000, 4200\) lie outside the 4096-byte DRAM"
    )
    with pytest.raises(SimulationError, match=message):
        program(past_dram).run_raw()
    past_sp = asm("load local=65526 d=1 h=1 w=20 sw=1 bits=8 src_h=1 src_w=20")
    message = "field local=65526 with 20 elements runs past the 65536-byte scratchpad"
    with pytest.raises(SimulationError, match=message):
        program(past_sp).run_raw()
    bad_shift = asm("""
        load to_acc=1 d=1 h=1 w=2 sw=1 bits=32 signed=1 src_h=1 src_w=2 signal=0b1
        vrequant wait=0b1 count=4 lo=-128 hi=127
    """)
    with pytest.raises(
        SimulationError,
        match=r"instruction 1 \(vrequant on vector\): shift must lie in \[-31, 30\]",
    ):
        program(bad_shift, [Segment(0, 32, True, np.array([1 << 30, 40]))]).run_raw()


# ---- order, tokens, deadlocks -----------------------------------------------------------------


def test_the_earliest_runnable_head_in_program_order_runs_first() -> None:
    # After 0 and 1 run, the heads are 2 (vrequant, now runnable) and 3 (a load that never
    # waits). 2 is earlier, so it reads the first data; draining the load queue first would let
    # 3 overwrite them.
    code = asm("""
        load to_acc=1 dram=16 d=1 h=1 w=2 sw=1 bits=32 signed=1 src_h=1 src_w=2 signal=0b100000
        load d=1 h=1 w=4 sw=1 bits=8 signed=1 src_h=1 src_w=4 signal=0b1
        vrequant wait=0b100001 out=8 count=4 lo=-128 hi=127 signal=0b10
        load dram=4 d=1 h=1 w=4 sw=1 bits=8 signed=1 src_h=1 src_w=4
        store wait=0b10 local=8 dram=32 d=1 h=1 w=4 sw=1 bits=8 signed=1
    """)
    segments = [
        Segment(0, 8, True, np.array([1, 2, 3, 4, 9, 9, 9, 9])),
        Segment(16, 32, True, IDENTITY),
    ]
    prog = program(code, segments, (), [tensor("y", (4,), 32)])
    assert prog.run_raw().raw_outputs[0].tolist() == [1, 2, 3, 4]


def test_a_deadlock_names_every_blocked_instruction_and_its_empty_tokens() -> None:
    code = asm("""
        load d=1 h=1 w=4 sw=1 bits=8 signed=1 src_h=1 src_w=4 signal=0b1
        conv wait=0b1001 c_in=1 ih=1 iw=4 n=1 groups=1 kh=1 kw=1 stride_h=1 stride_w=1 dil_h=1 dil_w=1 oh=1 ow=4 w_bits=8 a_bits=8
        store wait=0b100000 dram=8 d=1 h=1 w=4 sw=1 bits=8 signed=1
    """)
    with pytest.raises(SimulationError) as error:
        program(code).run_raw()
    message = str(error.value)
    assert message.startswith(
        "the program deadlocks: instruction 1 (conv on compute) waits for token(s) 3; "
        "instruction 2 (store on store) waits for token(s) 5;"
    )
    assert "2 instruction(s) never run" in message


# ---- Program.run ------------------------------------------------------------------------------


def _copy_program(scale: float, zero_point: int) -> Program:
    code = asm("""
        load d=1 h=1 w=6 sw=1 bits=8 signed=1 src_h=1 src_w=6 signal=0b1
        store wait=0b1 dram=8 d=1 h=1 w=6 sw=1 bits=8 signed=1
    """)
    x = TensorDesc("x", (2, 3), 0, 8, True, scale, zero_point)
    y = TensorDesc("y", (2, 3), 8, 8, True, scale / 2, zero_point)
    return program(code, (), [x], [y])


def test_run_quantizes_half_to_even_and_dequantizes_with_the_output_descriptor() -> None:
    prog = _copy_program(0.5, 3)
    x = np.array([[0.25, 0.75, 1.25], [-0.25, 1000.0, -1000.0]], np.float32)
    result = prog.run(x, trace=True)
    # x / 0.5 = 0.5, 1.5, 2.5, -0.5 round half to even to 0, 2, 2, 0; + 3; then saturate.
    assert result.raw_outputs[0].tolist() == [[3, 5, 5], [3, 127, -128]]
    assert result.outputs[0].dtype == np.float32
    expected = ((result.raw_outputs[0] - 3) * 0.25).astype(np.float32)
    np.testing.assert_array_equal(result.outputs[0], expected)
    assert result.trace is not None and json.dumps(result.trace)
    assert prog.run(x).trace is None


def test_inputs_of_the_wrong_count_shape_dtype_or_range_raise_input_error_naming_them() -> None:
    prog = _copy_program(0.5, 0)
    with pytest.raises(InputError, match=r"takes 1 float input\(s\) \('x'\), but 2 were given"):
        prog.run(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(
        InputError, match=r"input 'x' expects shape \[2, 3\], but an array of shape \[3, 2\]"
    ):
        prog.run(np.zeros((3, 2)))
    with pytest.raises(
        InputError,
        match=r"input 'x' expects real numbers \(a float or integer array\), but an "
        "array of dtype <U1",
    ):
        prog.run(np.full((2, 3), "a"))
    with pytest.raises(InputError, match="input 'x' holds NaN"):
        prog.run(np.full((2, 3), np.nan))
    with pytest.raises(
        InputError, match=r"input 'x' expects integers \(int8\), but an array of dtype float64"
    ):
        prog.run_raw(np.zeros((2, 3)))
    with pytest.raises(
        InputError,
        match=r"input 'x' expects int8 values in \[-128, 127\], but the array holds values in \[0, 128\]",
    ):
        prog.run_raw(np.array([[0, 1, 2], [3, 4, 128]]))


# ---- against the qnn reference interpreter --------------------------------------------------


def _qnn(text: str) -> ModuleOp:
    module = Parser(make_context(), text, "sim.mlir").parse_module()
    module.verify()
    return module


def test_conv_bias_relu_requantize_matches_the_reference_interpreter() -> None:
    """A grouped, strided, padded conv with bias and a per-channel requantize with relu, in
    `qnn` and as accelerator code: padding by the input load, the bias broadcast into acc by a
    stride-0 load, per-channel multipliers and the relu range in store_acc."""
    x = RNG.integers(-128, 128, (1, 6, 7, 7)).astype(np.int8)
    w = RNG.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    bias = RNG.integers(-5000, 5000, 4).astype(np.int32)
    scales = [0.0004, 0.001, 0.00025, 0.0007]
    x_t, w_t, b_t = "tensor<1x6x7x7xsi8>", "tensor<4x3x3x3xsi8>", "tensor<4xsi32>"
    a_t, y_t = "tensor<1x4x4x4xsi32>", "tensor<1x4x4x4xsi8>"
    text = f"""func.func @forward(%x: {x_t}) -> {y_t} {{
      %w = qnn.constant dense<"0x{w.tobytes().hex()}"> : {w_t}
      %b = qnn.constant dense<"0x{bias.tobytes().hex()}"> : {b_t}
      %c = qnn.conv2d %x, %w, %b stride [2, 2] pad [1, 1, 1, 1] dilation [1, 1] groups 2 at "conv" : ({x_t}, {w_t}, {b_t}) -> {a_t}
      %y = qnn.requantize %c from <si32, axis = 1, scale = {scales}, zp = [0, 0, 0, 0]> to <si8, scale = [0.05], zp = [0]> rounding "gemmlowp" act <relu> at "rq" : {a_t} -> {y_t}
      func.return %y : {y_t}
    }}"""
    (expected,) = reference.run(_qnn(text), x)
    m0, shift = intops.quantize_multipliers(np.array(scales) / 0.05)
    code = asm(f"""
        load dram=0 d=6 h=9 w=9 sd=49 sh=7 sw=1 bits=8 signed=1 pad_top=1 pad_left=1 src_h=7 src_w=7 signal=0b1
        load dram=512 local=600 d=1 h=1 w={w.size} sw=1 bits=8 signed=1 src_h=1 src_w={w.size} signal=0b10
        load to_acc=1 dram=1024 d=4 h=4 w=4 sd=1 sh=0 sw=0 bits=32 signed=1 src_h=4 src_w=4 signal=0b100
        load to_acc=1 dram=1040 local=100 d=1 h=1 w=8 sw=1 bits=32 signed=1 src_h=1 src_w=8 signal=0b1000
        conv wait=0b111 c_in=6 ih=9 iw=9 wgt=600 n=4 groups=2 kh=3 kw=3 stride_h=2 stride_w=2 dil_h=1 dil_w=1 oh=4 ow=4 accumulate=1 w_bits=8 a_bits=8 signal=0b10000
        store_acc wait=0b11000 dram=2048 d=4 h=4 w=4 sd=16 sh=4 sw=1 bits=8 signed=1 params=100 lo=0 hi=127
    """)
    segments = [
        Segment(512, 8, True, w.reshape(-1).astype(np.int64)),
        Segment(1024, 32, True, bias.astype(np.int64)),
        Segment(1040, 32, True, np.concatenate([m0, shift])),
    ]
    prog = program(
        code, segments, [tensor("x", (1, 6, 7, 7), 0)], [tensor("y", (1, 4, 4, 4), 2048)]
    )
    np.testing.assert_array_equal(prog.run_raw(x).raw_outputs[0], expected)


def test_avg_pool_matches_the_reference_interpreter() -> None:
    x = RNG.integers(-128, 128, (1, 2, 5, 5)).astype(np.int8)
    x_t, y_t = "tensor<1x2x5x5xsi8>", "tensor<1x2x3x3xsi8>"
    text = f"""func.func @forward(%x: {x_t}) -> {y_t} {{
      %y = qnn.avg_pool2d %x kernel [3, 3] stride [2, 2] pad [1, 1, 1, 1] ceil_mode at "ap" : {x_t} -> {y_t}
      func.return %y : {y_t}
    }}"""
    (expected,) = reference.run(_qnn(text), x)
    pool: Pool = ((3, 3), (2, 2), (1, 1, 1, 1), True, False)
    prog = _pool_program((2, 5, 5), (3, 3), pool, avg=1)
    np.testing.assert_array_equal(prog.run_raw(x[0]).raw_outputs[0], expected[0])


# ---- the CLI-facing functions -------------------------------------------------------------------


def test_main_run_and_main_profile_print_results_and_write_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "copy.dpb"
    save_program(_copy_program(0.5, 0), binary)
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]], np.float32))
    main_run(binary, tmp_path / "x.npy", tmp_path / "trace.json")
    out = capsys.readouterr().out
    # y = x quantized at scale 0.5, read back at scale 0.25: half of x.
    assert "output 'y' [2, 3]:\n[[ 0.5  1.   1.5]\n [-0.5 -1.  -1.5]]" in out
    assert "sample 0: 2 (1.5)\nsample 1: 0 (-0.5)\n" in out  # the top class of each sample
    assert "\ntotal " in out and "utilization" in out
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert [e["name"] for e in trace["traceEvents"] if e["ph"] == "X"] == [
        "all: load",
        "all: store",
    ]
    main_profile(binary)
    assert "\ntotal " in capsys.readouterr().out
    with pytest.raises(
        InputError, match=r"missing\.npy. does not exist; give the path of a \.npy file"
    ):
        main_run(binary, tmp_path / "missing.npy")
