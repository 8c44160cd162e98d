"""The timing model and RunStats: exact cycle counts of tiny programs worked by hand (the
arithmetic is in the comments), both dataflows, BitFusion widths, DRAM contention and token
waits, traffic and energy, per-layer rows, the trace, and the roofline as a lower bound."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from timed import FAST, OS, conv_line, timed

from dopant.backend.image import LayerGemm
from dopant.backend.target import AccelConfig
from dopant.runtime.program import LayerRange
from dopant.runtime.simulator import SimulationError


def test_dram_latency_pipelines_but_the_channel_is_shared_by_load_and_store() -> None:
    stats = timed("""
        load d=1 h=4 w=16 sh=16 sw=1 bits=8 signed=1
        store dram=4096 d=1 h=1 w=32 sw=1 bits=8 signed=1
        load d=1 h=1 w=8 sw=1 bits=8 signed=1
    """)
    # 0 load, 64 B: holds the channel 64 / 8 = 8 cycles, done at 10 + 8 = 18.
    # 1 store, 32 B, ready at 0: the channel is busy until 8, so it starts at 8 (8 cycles of
    #   dram_wait) and is done at 8 + 10 + 32 / 8 = 22.
    # 2 load, 8 B: its engine may start it at 8, with 0 in flight (4 allowed), but at 8 the
    #   store, earlier in the program, takes the channel until 12 (4 cycles of dram_wait):
    #   12 + 10 + 1 = 23, after 0's 18 (completions in program order).
    assert [(s.start_cycle, s.end_cycle) for s in stats.slots] == [(0, 18), (8, 22), (12, 23)]
    assert stats.total_cycles == 23
    load, store = stats.engines["load"], stats.engines["store"]
    # The load engine is busy while a load is in flight: 0 .. 18 and 12 .. 23, 23 cycles.
    assert (load.instructions, load.busy_cycles, load.stall_cycles) == (
        2,
        23,
        {"token_wait": 0, "dram_wait": 4},
    )
    assert (store.busy_cycles, store.stall_cycles) == (14, {"token_wait": 0, "dram_wait": 8})
    # Roofline: no MACs; (64 + 32 + 8) B / 8 = 13 cycles of channel time.
    assert stats.roofline_cycles == stats.memory_bound_cycles == 13


def test_a_token_wait_delays_the_consumer_and_is_counted_by_layer() -> None:
    layers = [LayerRange("conv", 0, 2), LayerRange("out", 2, 3)]
    stats = timed(
        f"""
        load d=3 h=6 w=7 sd=42 sh=7 sw=1 bits=8 signed=1 signal=0b1
        {conv_line(wait=1, signal=2)}
        store_acc wait=0b10 dram=4096 d=10 h=4 w=5 sd=20 sh=5 sw=1 bits=8 signed=1 lo=-128 hi=127
        """,
        layers=layers,
    )
    # load: 3 * 6 * 7 = 126 B, ceil(126 / 8) = 16 channel cycles: done at 10 + 16 = 26.
    # conv (weight stationary, w8a8): K folds ceil(27 / 8) = 4, N folds ceil(10 / 8) = 2, so
    #   8 folds: 8 (first preload) + 8 * max(M = 20, 8) + (8 + 8 - 2) = 182: 26 .. 208.
    # store_acc: 200 B, 25 channel cycles; the requantizer's 200 / 8 = 25 too: 208 + 10 + 25.
    assert [(s.start_cycle, s.end_cycle) for s in stats.slots] == [(0, 26), (26, 208), (208, 243)]
    assert [s.token_wait_cycles for s in stats.slots] == [0, 26, 208]
    conv, out = stats.layers
    assert (conv.name, conv.cycles, conv.stall_cycles, conv.bound) == ("conv", 208, 26, "compute")
    # 5400 MACs / 64 per cycle = 84.375 against 126 B / 8 = 15.75.
    assert (conv.compute_bound_cycles, conv.memory_bound_cycles) == (84.375, 15.75)
    assert conv.utilization == 84.375 / 208
    assert conv.busy_cycles == {"load": 26, "compute": 182, "vector": 0, "store": 0}
    assert (out.cycles, out.stall_cycles, out.bound, out.utilization) == (
        35,
        208,
        "memory",
        25 / 35,
    )
    assert stats.roofline_cycles == 84.375 and stats.utilization == 84.375 / 243
    table = stats.table()
    assert (conv.added_cycles, out.added_cycles) == (208, 35)  # in sequence: all their own
    assert table.splitlines()[2].split() == [
        "conv",
        "208",
        "208",
        "85.6%",
        "40.6%",
        "compute",
        "26",
        "126",
        "5,400",
    ]
    assert table.splitlines()[-2].split()[:5] == ["total", "243", "243", "100.0%", "34.7%"]
    assert "which sum to the run's cycles" in table.splitlines()[-1]
    assert json.loads(json.dumps(stats.to_dict()))["layers"][1]["bound"] == "memory"


# (config, w_bits, a_bits, cycles, fold model, compute bound), all for the running example.
# The array's edge carries 8 bits per row (activations) and per column (weights) a cycle.
# The fold model is SCALE-Sim's of the whole layer (one tile here), 8 x 8 array: WS per fold
# 2 * 8 + 8 + (M = 20) - 2 = 42, OS per fold 8 + 8 + T - 2 with T = ceil(K / (fa * fw)) (the
# PEs' throughput; the reference knows no edge lanes, so a fused OS stream can run over it).
CONVS = [
    # WS w8a8: 4 K folds x 2 N folds = 8: 8 + 8 * 20 + 14 = 182; fold model 8 * 42.
    (FAST, 8, 8, 182, 8 * 42, 5400 / 64),
    # WS w4a4: fa = fw = 2: K folds ceil(27 / 16) = 2, N folds ceil(10 / 16) = 1; a fold's
    # 16 x 16 four-bit weights take 16 * 2 * 4 / 8 = 16 cycles down a column: 16 + 2 * 20 + 14.
    (FAST, 4, 4, 70, 2 * 42, 5400 / 256),
    # WS w2a8: fa = 1, fw = 4: K folds 4, N folds ceil(10 / 32) = 1; the preload is 8 rows of
    # 4 two-bit weights, 8 cycles: 8 + 4 * 20 + 14 = 102.
    (FAST, 2, 8, 102, 4 * 42, 5400 / 256),
    # WS w8a2: fa = 4, fw = 1: K folds ceil(27 / 32) = 1, N folds 2; 32 rows of 8-bit weights
    # take 32 cycles per column, more than the 20-row stream hides: 32 + 2 * 32 + 14 = 110.
    (FAST, 8, 2, 110, 2 * 42, 5400 / 256),
    # OS w8a8: M folds ceil(20 / 8) = 3, N folds 2 = 6; K streams 27: 6 * 27 + 14 + 8 = 184;
    # fold model 6 * (8 + 8 + 27 - 2) = 6 * 41.
    (OS, 8, 8, 184, 6 * 41, 5400 / 64),
    # OS w4a4: the PEs could take K in ceil(27 / 4) = 7 cycles, but a row lane carries 2
    # activations and a column lane 2 weights a cycle: ceil(27 / 2) = 14;
    # 6 * max(14, 8) + 14 + 8 = 106 (fold model, without the edge: 6 * (14 + 7)).
    (OS, 4, 4, 106, 6 * 21, 5400 / 256),
    # OS w2a8: fa * fw = 4 as well, but 27 eight-bit activations take 27 cycles per row: 184.
    (OS, 2, 8, 184, 6 * 21, 5400 / 256),
    # OS w8a2: 27 eight-bit weights take 27 cycles per column: 184, no faster than w8a8.
    (OS, 8, 2, 184, 6 * 21, 5400 / 256),
    # OS w2a2: 16 MACs a PE, ceil(27 / 16) = 2, but 4 per lane a cycle: ceil(27 / 4) = 7 < 8
    # rows: 6 * 8 + 14 + 8 = 70; fold model 6 * (14 + 2).
    (OS, 2, 2, 70, 6 * 16, 5400 / 1024),
]


@pytest.mark.parametrize(("config", "w_bits", "a_bits", "cycles", "fold_model", "bound"), CONVS)
def test_conv_cycles_per_dataflow_and_bitfusion_width(
    config: AccelConfig, w_bits: int, a_bits: int, cycles: int, fold_model: int, bound: float
) -> None:
    # The layer's untiled GEMM in the debug map: M = 20, K = 27, N = 10 (`conv_line`).
    gemm = LayerGemm("conv", 20, 27, 10, 1, w_bits, a_bits)
    stats = timed(conv_line(w_bits, a_bits), config, [LayerRange("conv", 0, 1)], [gemm])
    assert stats.total_cycles == stats.engines["compute"].busy_cycles == cycles
    assert stats.fold_model_cycles == stats.layers[0].fold_model_cycles == fold_model
    assert max(layer.compute_span_cycles for layer in stats.layers) == cycles  # the one conv
    assert stats.compute_bound_cycles == bound and stats.macs == 5400
    # BitFusion: a w x a MAC uses (w / 2) * (a / 2) of the 16 bricks: 0.2 pJ * w * a / 64.
    assert stats.energy_pj["mac"] == pytest.approx(5400 * 0.2 * w_bits * a_bits / 64)


def test_depthwise_groups_run_one_after_another() -> None:
    line = "conv c_in=4 ih=4 iw=4 n=4 groups=4 kh=3 kw=3 stride_h=1 stride_w=1 dil_h=1 dil_w=1 oh=2 ow=2 w_bits=8 a_bits=8"
    # Per group M = 4, K = 9, N = 1. WS: 2 K folds: 8 + 2 * max(4, 8) + 14 = 38, times 4 groups.
    assert timed(line).total_cycles == 4 * 38
    # OS: 1 fold streaming 9: 9 + 14 + 8 = 31, times 4.
    assert timed(line, OS).total_cycles == 4 * 31


def test_store_acc_streams_at_the_vector_lanes_but_frees_the_channel_early() -> None:
    stats = timed(
        """
        store_acc dram=4096 d=2 h=4 w=8 sd=32 sh=8 sw=1 bits=8 signed=1 lo=-128 hi=127
        load d=2 h=4 w=8 sd=32 sh=8 sw=1 bits=8 signed=1
        """,
        FAST.with_changes(vector_lanes=2),
    )
    # store_acc: 64 B hold the channel 8 cycles, but 64 elements at 2 lanes take 32: 10 + 32.
    # The load gets the channel at 8: 8 + 10 + 8 = 26.
    assert [(s.start_cycle, s.end_cycle) for s in stats.slots] == [(0, 42), (8, 26)]
    assert stats.engines["load"].stall_cycles["dram_wait"] == 8


def test_vector_instructions_take_their_elements_over_the_lanes() -> None:
    stats = timed("""
        vadd count=100 lo=-128 hi=127
        vrequant count=17 lo=-128 hi=127
        vpool c=2 ih=4 iw=4 oh=3 ow=3 kh=2 kw=2 stride_h=1 stride_w=1 bits=8 signed=1
    """)
    # ceil(100 / 8) = 13; ceil(17 / 8) = 3; 2 * 3 * 3 windows of 2 * 2 = 72 / 8 = 9.
    assert [s.cycles for s in stats.slots] == [13, 3, 9] and stats.total_cycles == 25
    assert stats.traffic_bytes["sp_read_bytes"] == 2 * 100 + 17 + 72
    assert stats.traffic_bytes["sp_write_bytes"] == 100 + 17 + 18


def test_sub_byte_data_moves_packed() -> None:
    # 64 four-bit elements are 32 B: 4 channel cycles; 64 two-bit elements 16 B: 2, started
    # when the first one's transfer is over (the DMA keeps several in flight): 4 + 10 + 2.
    stats = timed("""
        load d=1 h=1 w=64 sw=1 bits=4
        load d=1 h=1 w=64 sw=1 bits=2
    """)
    assert [(s.start_cycle, s.end_cycle) for s in stats.slots] == [(0, 14), (4, 16)]
    assert stats.traffic_bytes["dram_read_bytes"] == 48
    assert stats.traffic_bytes["sp_write_bytes"] == 128  # one element per scratchpad byte


@pytest.mark.parametrize(
    ("config", "accumulate", "sp_read", "acc_read", "acc_write"),
    [
        # WS: weights K * N = 270 once, activations M * K = 540 per N fold (2); the 200 outputs
        # (800 B) are written per K fold (4) and read back for the 3 folds after the first.
        (FAST, 0, 270 + 540 * 2, 800 * 3, 800 * 4),
        (FAST, 1, 270 + 540 * 2, 800 * 4, 800 * 4),
        # OS: weights per M fold (3), activations per N fold (2); outputs written once.
        (OS, 0, 270 * 3 + 540 * 2, 0, 800),
        (OS, 1, 270 * 3 + 540 * 2, 800, 800),
    ],
)
def test_conv_traffic_per_memory_level(
    config: AccelConfig, accumulate: int, sp_read: int, acc_read: int, acc_write: int
) -> None:
    traffic = timed(conv_line(accumulate=accumulate), config).traffic_bytes
    assert (traffic["sp_read_bytes"], traffic["acc_read_bytes"], traffic["acc_write_bytes"]) == (
        sp_read,
        acc_read,
        acc_write,
    )


def test_energy_adds_macs_and_bytes_at_each_level() -> None:
    stats = timed(f"load d=1 h=1 w=64 sw=1 bits=8\n{conv_line()}")
    # MACs 5400 * 0.2 = 1080; DRAM 64 B * 100; scratchpad (64 written + 1350 read) * 1.0;
    # accumulator (2400 read + 3200 written) * 2.0.
    expected = {"mac": 1080.0, "dram": 6400.0, "scratchpad": 1414.0, "accumulator": 11200.0}
    assert stats.energy_pj == pytest.approx({**expected, "total": 20094.0})


def test_the_chrome_trace_has_one_event_per_instruction_on_its_engine_track() -> None:
    stats = timed(
        f"""
        load d=3 h=6 w=7 sd=42 sh=7 sw=1 bits=8 signed=1 signal=0b1
        {conv_line(wait=1)}
        """,
        layers=[LayerRange("stem.conv", 0, 2)],
    )
    trace = json.loads(json.dumps(stats.chrome_trace()))
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    tracks = {
        e["args"]["name"]: e["tid"] for e in trace["traceEvents"] if e["name"] == "thread_name"
    }
    # At 200 MHz a cycle is 0.005 us: the conv runs from cycle 26 for 182 cycles.
    assert [(e["name"], e["tid"]) for e in events] == [
        ("stem.conv: load", tracks["load"]),
        ("stem.conv: conv", tracks["compute"]),
    ]
    assert events[1]["ts"] == pytest.approx(26 / 200) and events[1]["dur"] == pytest.approx(
        182 / 200
    )
    assert events[1]["args"]["token_wait_cycles"] == 26


def test_instructions_outside_every_layer_get_their_own_row() -> None:
    stats = timed("vadd count=8\nvadd count=8", layers=[LayerRange("add", 0, 1)])
    assert [(row.name, row.instructions) for row in stats.layers] == [
        ("add", 1),
        ("(unlabelled)", 1),
    ]


def test_timing_refuses_deadlocks_and_widths_the_machine_cannot_fuse() -> None:
    with pytest.raises(
        SimulationError, match=r"deadlocks: instruction 1 \(vadd on vector\) waits for token\(s\) 2"
    ):
        timed("vadd count=8 signal=0b1\nvadd wait=0b100 count=8")
    eight_only = FAST.with_changes(weight_bits=(8,))
    with pytest.raises(
        SimulationError, match=r"instruction 0 \(conv on compute\): 'small8' does not fuse to w4a8"
    ):
        timed(conv_line(w_bits=4), eight_only)


@st.composite
def conv_programs(draw: st.DrawFn) -> tuple[str, AccelConfig]:
    """A machine and a pipelined program of 1-3 conv tiles (load, load, conv, store_acc each)."""
    config = FAST.with_changes(
        rows=draw(st.sampled_from([2, 4, 8, 16])),
        cols=draw(st.sampled_from([2, 4, 8, 16])),
        dataflow=draw(st.sampled_from(["ws", "os"])),
        dram_bytes_per_cycle=draw(st.sampled_from([1, 4, 16, 64])),
        dram_latency_cycles=draw(st.sampled_from([0, 7, 100])),
        vector_lanes=draw(st.sampled_from([1, 8, 32])),
        dma_outstanding_requests=draw(st.sampled_from([1, 2, 16])),
        scratchpad_kib=256,
        accumulator_kib=64,
    )
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        groups = draw(st.sampled_from([1, 1, 2, 4]))
        c_in, n = groups * draw(st.integers(1, 16)), groups * draw(st.integers(1, 16))
        kh, kw, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
        oh, ow = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        ih, iw = (oh - 1) * stride + kh, (ow - 1) * stride + kw
        w_bits, a_bits = draw(st.sampled_from([2, 4, 8])), draw(st.sampled_from([2, 4, 8]))
        weights = n * (c_in // groups) * kh * kw
        lines += [
            f"load d={c_in} h={ih} w={iw} sd={ih * iw} sh={iw} sw=1 bits={a_bits} signal=0b1",
            f"load d={n} h=1 w={weights // n} sd={weights // n} sw=1 bits={w_bits} signal=0b10",
            f"conv wait=0b11 c_in={c_in} ih={ih} iw={iw} n={n} groups={groups} kh={kh} kw={kw} "
            f"stride_h={stride} stride_w={stride} dil_h=1 dil_w=1 oh={oh} ow={ow} "
            f"w_bits={w_bits} a_bits={a_bits} signal=0b100",
            f"store_acc wait=0b100 d={n} h={oh} w={ow} bits=8 lo=0 hi=255",
        ]
    return "\n".join(lines), config


@settings(max_examples=150)
@given(conv_programs())
def test_simulated_cycles_never_beat_the_roofline_and_engines_complete_in_order(
    case: tuple[str, AccelConfig],
) -> None:
    text, config = case
    tiles = (text.count("\n") + 1) // 4
    layers = [LayerRange(f"tile{i}", 4 * i, 4 * i + 4) for i in range(tiles)]
    stats = timed(text, config, layers)
    assert stats.roofline_cycles <= stats.total_cycles and stats.utilization <= 1
    for row in stats.layers:
        assert row.roofline_cycles <= row.cycles and row.utilization <= 1
    for engine in stats.engines.values():
        assert engine.busy_cycles <= stats.total_cycles
    # Each engine completes in program order, with at most k DMAs (else 1) in flight at once.
    for engine in ("load", "compute", "store"):
        slots = [s for s in stats.slots if s.engine == engine]
        assert all(a.end_cycle <= b.end_cycle for a, b in pairwise(slots))
        limit = config.dma_outstanding_requests if engine != "compute" else 1
        for slot in slots:
            in_flight = [s for s in slots if s.start_cycle <= slot.start_cycle < s.end_cycle]
            assert len(in_flight) <= limit and slot.lane < limit


def test_overlapping_layers_are_charged_only_what_they_add_to_the_run() -> None:
    layers = [LayerRange("a", 0, 1), LayerRange("b", 1, 2), LayerRange("c", 2, 3)]
    stats = timed(
        f"""
        load d=3 h=6 w=7 sd=42 sh=7 sw=1 bits=8 signed=1
        {conv_line()}
        store_acc dram=4096 d=10 h=4 w=5 sd=20 sh=5 sw=1 bits=8 signed=1 lo=-128 hi=127
        """,
        layers=layers,
    )
    # No tokens: the engines start together. load 10 + 16 = 26; conv 182 (see CONVS); store_acc
    # waits for the channel the load holds 16 cycles: 16 + 10 + 25 = 51. So a adds 26, b ends
    # 156 later, and c ends inside b and adds nothing.
    assert [(s.start_cycle, s.end_cycle) for s in stats.slots] == [(0, 26), (0, 182), (16, 51)]
    assert [layer.added_cycles for layer in stats.layers] == [26, 156, 0]
    assert sum(layer.added_cycles for layer in stats.layers) == stats.total_cycles == 182
    assert sum(layer.cycles for layer in stats.layers) > stats.total_cycles  # spans overlap
