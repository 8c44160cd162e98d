"""The machine model's corrections (the issue's item 8) and the timing tests item 7 found
missing, each worked by hand in its comments: a broadcast load reads its distinct words once,
DMA engines keep several requests in flight, a bit-fused array's edge bounds its stream,
non-square arrays drain in R + C - 2, and utilization of a memory-bound program."""

from __future__ import annotations

from itertools import pairwise

import pytest
from timed import FAST, OS, conv_line, timed

from dopant.backend.asm import parse_assembly
from dopant.backend.costs import dma_run_cycles, engine_share, instruction_cost
from dopant.runtime.program import LayerRange

# The bias of a tile of the 3 -> 24, 3 x 3, 30 x 30 conv (pad 1) as the tiler cut it on small8
# before this change: 24 channels x 2 rows x 30 columns of int32, strides (1, 0, 0).
BIAS = "load to_acc=1 d=24 h=2 w=30 sd=1 sh=0 sw=0 bits=32 signed=1"


def test_a_bias_broadcast_reads_its_words_once_and_fills_the_accumulator_on_chip() -> None:
    stats = timed(f"""
        {BIAS}
        store dram=4096 d=1 h=1 w=32 sw=1 bits=8 signed=1
    """)
    # Counted as the whole int32 tile, the load moved 24 * 2 * 30 * 4 = 5760 B: 720 channel
    # cycles, done at 730 (and the layer's 15 tiles 86,400 of its 114,600 DRAM bytes).
    # Its distinct words are the 24 biases, 96 B: the channel is held 96 / 8 = 12 cycles; the
    # accumulator takes the 1440 words at one row of 8 a cycle, 180 cycles: done at 10 + 180.
    # (The layer's 15 bias loads: 15 * 96 = 1,440 B; the layer 114,600 - 86,400 + 1,440.)
    # The store waits for the channel only until 12: 12 + 10 + 32 / 8 = 26.
    assert [(s.start_cycle, s.end_cycle) for s in stats.slots] == [(0, 190), (12, 26)]
    traffic = stats.traffic_bytes
    assert (traffic["dram_read_bytes"], traffic["acc_write_bytes"]) == (96, 5760)
    assert stats.memory_bound_cycles == (96 + 32) / 8
    # DRAM (96 + 32) * 100 pJ; accumulator 5760 * 2; scratchpad the store's 32 bytes read.
    assert stats.energy_pj["dram"] == 12800 and stats.energy_pj["accumulator"] == 11520


LOAD = "load d=1 h=1 w=64 sw=1 bits=8"  # 64 B: 8 channel cycles, 10 + 8 = 18 to complete
STORE = "store dram=4096 d=1 h=1 w=64 sw=1 bits=8"  # the same for the store engine


@pytest.mark.parametrize(
    ("line", "outstanding", "ends"),
    [
        # One at a time, each pays the latency: sum(L + channel) = 4 * 18 = 72.
        (LOAD, 1, [18, 36, 54, 72]),
        # Two in flight: the third waits for the first to complete at 18, the fourth for the
        # second at 26: starts 0, 8, 18, 26.
        (LOAD, 2, [18, 26, 36, 44]),
        # Four in flight: starts 0, 8, 16, 24 as the channel frees: L + sum(channel) = 10 + 32.
        (LOAD, 4, [18, 26, 34, 42]),
        (STORE, 2, [18, 26, 36, 44]),
    ],
)
def test_a_dma_engine_keeps_several_requests_in_flight(
    line: str, outstanding: int, ends: list[int]
) -> None:
    config = FAST.with_changes(dma_outstanding_requests=outstanding)
    stats = timed("\n".join([line] * 4), config)
    assert [s.end_cycle for s in stats.slots] == ends
    engine = stats.engines[stats.slots[0].engine]
    # Busy from 0 to the last completion, with no stall: a full engine is busy, not stalled.
    assert engine.busy_cycles == ends[-1] == stats.total_cycles
    assert engine.stall_cycles == {"token_wait": 0, "dram_wait": 0}
    # The tiler's cost model follows the same rule: the chain, and a DMA's share of its engine
    # in a long run, max(S, (L + S) / k) = max(8, 18 / k).
    (instruction,) = parse_assembly(line)
    cost = instruction_cost(instruction, config)
    assert dma_run_cycles([cost] * 4, outstanding) == ends[-1]
    assert engine_share(cost, outstanding) == max(8, -(-18 // outstanding))
    # The trace draws each DMA in flight on a track of its own, so no track overlaps itself:
    # k tracks, but 3 at most, as 18-cycle DMAs started 8 cycles apart overlap 3 at a time.
    events = [e for e in stats.chrome_trace()["traceEvents"] if e["ph"] == "X"]
    tracks = {e["tid"] for e in events}
    assert len(tracks) == min(outstanding, 3)
    for tid in tracks:
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e["tid"] == tid)
        assert all(a[1] <= b[0] + 1e-9 for a, b in pairwise(spans))


def test_an_engine_with_a_dma_in_flight_can_also_stall() -> None:
    text = """
        load d=1 h=1 w=64 sw=1 bits=8
        vadd count=80 signal=0b1
        load wait=0b1 d=1 h=1 w=8 sw=1 bits=8
    """
    # 0 holds the channel 0 .. 8 and completes at 18; the vadd takes 80 / 8 = 10 cycles and
    # signals at 10. With 4 in flight the load engine could start 2 at 8, but its token comes
    # at 10 (2 cycles of token_wait while 0 is in flight): 10 + 10 + 1 = 21. Busy: 0 .. 18 and
    # 10 .. 21 overlap, 21 cycles.
    stats = timed(text)
    assert [(s.start_cycle, s.end_cycle) for s in stats.slots][2] == (10, 21)
    load = stats.engines["load"]
    assert (load.busy_cycles, load.stall_cycles["token_wait"]) == (21, 2)
    # One at a time, 2 starts when 0 completes at 18, its token long there: 18 + 11 = 29.
    stats = timed(text, FAST.with_changes(dma_outstanding_requests=1))
    assert [(s.start_cycle, s.end_cycle) for s in stats.slots][2] == (18, 29)
    assert (stats.engines["load"].busy_cycles, stats.engines["load"].stall_cycles) == (
        29,
        {"token_wait": 0, "dram_wait": 0},
    )


# A matrix-vector-like 1 x 1 conv: 64 input channels, 8 outputs of 1 x 8: M = 8, K = 64, N = 8,
# one fold on 8 x 8. Output stationary, each PE holds one output and takes fa * fw of its K
# products a cycle, so row lanes must bring fa * fw activations and column lanes fa * fw
# weights a cycle, over 8-bit lanes.
FC = "conv c_in=64 ih=1 iw=8 n=8 groups=1 kh=1 kw=1 stride_h=1 stride_w=1 dil_h=1 dil_w=1 oh=1 ow=8"


@pytest.mark.parametrize(
    ("w_bits", "a_bits", "cycles"),
    [
        # w8a8: T = 64: 64 + (8 + 8 - 2) + 8 = 86.
        (8, 8, 86),
        # w8a2: the PEs could take K in 64 / 4 = 16 cycles (16 + 22 = 38 before this check), but
        # a column lane carries one 8-bit weight a cycle: T = 64, 86, no faster than w8a8.
        (8, 2, 86),
        # w2a8: a row lane carries one 8-bit activation a cycle: T = 64 as well.
        (2, 8, 86),
        # w2a2: 16 MACs a PE (64 / 16 = 4 cycles, under the 8-row drain: 30 before), 4 two-bit
        # operands a lane a cycle: T = 64 / 4 = 16: 16 + 22 = 38.
        (2, 2, 38),
    ],
)
def test_a_bit_fused_output_stationary_stream_is_bound_by_the_array_edge(
    w_bits: int, a_bits: int, cycles: int
) -> None:
    stats = timed(f"{FC} w_bits={w_bits} a_bits={a_bits}", OS)
    assert stats.total_cycles == cycles


@pytest.mark.parametrize(
    ("dataflow", "rows", "cols", "cycles"),
    [
        # The running example, M = 20, K = 27, N = 10, w8a8; the drain is R + C - 2 = 18 on
        # both arrays (R + R - 2 would give 6 and 30).
        # WS 4 x 16: K folds ceil(27 / 4) = 7, N folds 1: 4 (preload) + 7 * 20 + 18 = 162.
        ("ws", 4, 16, 162),
        # WS 16 x 4: K folds ceil(27 / 16) = 2, N folds ceil(10 / 4) = 3: 16 + 6 * 20 + 18 = 154.
        ("ws", 16, 4, 154),
        # OS 4 x 16: M folds ceil(20 / 4) = 5, N folds 1, K = 27: 5 * 27 + 18 + 4 = 157.
        ("os", 4, 16, 157),
        # OS 16 x 4: M folds ceil(20 / 16) = 2, N folds 3: 6 * 27 + 18 + 16 = 196.
        ("os", 16, 4, 196),
    ],
)
def test_non_square_arrays_drain_in_rows_plus_cols(
    dataflow: str, rows: int, cols: int, cycles: int
) -> None:
    config = FAST.with_changes(dataflow=dataflow, rows=rows, cols=cols)
    assert timed(conv_line(), config).total_cycles == cycles


def test_utilization_of_a_memory_bound_program_uses_the_memory_bound() -> None:
    stats = timed(
        f"""
        load d=1 h=64 w=64 sh=64 sw=1 bits=8
        {conv_line()}
        """,
        layers=[LayerRange("all", 0, 2)],
    )
    # The load: 4096 B, 512 channel cycles, done at 10 + 512 = 522; the conv runs beside it
    # (no tokens), 182 cycles. Memory bound 4096 / 8 = 512 over 5400 / 64 = 84.375 of compute:
    # utilization 512 / 522, for the run and for its one layer.
    assert stats.total_cycles == 522
    assert (stats.compute_bound_cycles, stats.memory_bound_cycles) == (84.375, 512)
    assert stats.utilization == 512 / 522
    (layer,) = stats.layers
    assert (layer.bound, layer.utilization) == ("memory", 512 / 522)
