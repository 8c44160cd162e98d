"""What one instruction costs on the modeled machine, from its fields and the AccelConfig alone:
engine cycles, DRAM channel occupancy, MACs, bytes moved per memory level and MAC energy.

No values are computed or read here (the timing model never looks at data). The formulas, with
R x C the array (`rows` x `cols`), bw = `dram_bytes_per_cycle`, L = `dram_latency_cycles`,
V = `vector_lanes`, and ceil(a / b) written a /^ b:

- load / store / store_acc (DMA): B bytes cross the channel. A store moves its block,
  B = program.moved_bytes(d*h*w, bits) (sub-byte data travels packed); a load reads each
  distinct DRAM word once: a dimension with stride 0 (a broadcast, such as a conv's bias over
  its rows and columns) is read once, B = moved_bytes(d'*h'*w', bits) with d' = d if sd else 1
  (h', w' likewise; a load's padding is counted in its block). The channel is held B /^ bw
  cycles from the start. The engine's data path is held S = max(B /^ bw, local) cycles, local
  being what the on-chip side takes: a load into the accumulator writes all d*h*w words at one
  array row of C words a cycle (`accumulator_write_words_per_cycle`), so local = d*h*w /^ C (a
  bias broadcast is channel-cheap but not free); store_acc's requantizer takes d*h*w /^ V; a
  load into the scratchpad or a store, 0 (the channel is the slower side). The instruction
  completes L + S after its start (its data arrives, or its writes are acknowledged, L later).
- DMA in flight (k = `dma_outstanding_requests`): the load or store engine may start its next
  DMA once the previous one's S cycles are over (its data path is free), the channel is free,
  and fewer than k of its own are in flight; it completes L + S after its start, so after the
  previous one (which started at least its S earlier). A run of like DMAs therefore
  issues one every p = max(S, (L + S) / k) cycles: with s_i = max(s_(i-1) + S, e_(i-k)) and
  e_j = s_j + L + S, a steady period p gives p = S or k p = L + S. `engine_share` is that p
  (rounded up), what the tiler charges an engine per DMA; k = 1 gives L + S, one at a time.
- conv, per group (groups run one after another), with M = oh*ow, K = (c_in/groups)*kh*kw,
  N = n/groups and (fa, fw) = config.fusion(w_bits, a_bits) (BitFusion). The array's input
  bandwidth: one lane per row (activations) and per column (weights), each carrying 8 bits a
  cycle (`edge_lane_bits_per_cycle`), R + C bytes a cycle, that is R*fa activations and C*fw
  weights a cycle, sub-byte operands packed (the width of the 8-bit PE's operands: at w8a8
  both dataflows take one element per lane a cycle). The scratchpad keeps one element per
  byte address; its banks are taken to keep the lanes full, so the lanes are the bound here.
  weight stationary: folds = K /^ (R*fa) * N /^ (C*fw); PE (r, c) holds fa x fw weights and
  takes its row's fa activations (8 bits) a cycle, so the stream of M rows never waits for the
  edge. A fold's (R*fa) x (C*fw) weights enter through the column lanes: R*fa*fw weights of
  w_bits = 8*R*fa bits per column, so the preload takes P = R*fa cycles (R at a8),
  double-buffered behind the previous fold's stream, so cycles = P (first preload) +
  folds * max(M, P) + (R + C - 2) (skew and drain of the last fold);
  output stationary: folds = M /^ R * N /^ C, PE (r, c) holding output (m, n) and doing
  fa*fw of its K products a cycle, so K /^ (fa*fw) cycles per fold if the edge keeps up; but
  row r then needs fa*fw activations (8*fw bits) and column c fa*fw weights (8*fa bits) a
  cycle from their 8-bit lanes, so the stream takes
  T = max(K /^ (fa*fw), K*a_bits /^ 8, K*w_bits /^ 8) = K /^ min(fa, fw) cycles: w8a2
  (fa = 4, fw = 1) has its column lanes carry one 8-bit weight a cycle, T = K, no faster than
  w8a8; w4a4 K /^ 2; w2a2 K /^ 4 against the K /^ 16 the PEs could do. The previous fold's
  outputs drain under the stream, so cycles = folds * max(T, R) + (R + C - 2) + R (skew,
  then the final drain).
  `fold_model_cycles` (below) is the standard reference for a whole layer, not a cost.
  `compute_bound_cycles` = MACs / (R*C*fa*fw), the array at its peak.
- vadd / vrequant: count /^ V; vpool: c*oh*ow*kh*kw /^ V (every window element is one lane-op).

Bytes per memory level (what `RunStats` adds up and prices with the config's pJ/byte):
- DRAM: B above, read by loads (a broadcast's distinct words), written by stores and store_acc.
- scratchpad (one element per byte address): loads write d*h*w; stores read d*h*w; conv reads
  its weights once per pass over them and its activations as the array consumes them, im2col
  windows formed on the fly with no line buffer (each input element is read once per window it
  is in): WS reads the K*N weights once and streams the M*K activations once per column fold
  (N /^ (C*fw) times); OS streams the weights once per row fold (M /^ R times) and the
  activations once per column fold (N /^ C times); vector ops read their operands and write
  their results (vpool reads every window element).
- accumulator (4 bytes a word): a WS conv writes its M*N outputs once per K fold and reads them
  back for every fold after the first (read-modify-write), plus once more when `accumulate`;
  an OS conv keeps outputs in the PEs, so it writes them once and reads them only when
  `accumulate`. store_acc reads its block and its 2*d parameter words; loads to acc write d*h*w
  words (a broadcast replicates its words on chip); vadd/vrequant read their 4/2 parameter
  words.
- MAC energy: MACs * mac_energy_pj * (w_bits * a_bits) / 64: a w x a product uses
  (w/2)*(a/2) of a PE's sixteen 2-bit bricks (BitFusion), and mac_energy_pj is the 8x8 MAC's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from dopant.backend.image import moved_bytes
from dopant.backend.target import AccelConfig, ConfigError, ceil_div
from dopant.dialects.isa import Instruction
from dopant.support.errors import DopantError

Fields = dict[str, int]
ACC_WORD_BYTES = 4


@dataclass(frozen=True)
class Traffic:
    """Bytes moved at each memory level."""

    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    sp_read_bytes: int = 0
    sp_write_bytes: int = 0
    acc_read_bytes: int = 0
    acc_write_bytes: int = 0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def dram_bytes(self) -> int:
        return self.dram_read_bytes + self.dram_write_bytes

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Cost:
    """One instruction's cost. For a DRAM instruction `cycles` run from its transfer start and
    `issue_cycles` (S) are the first of them, during which it holds its engine's data path; the
    rest is DRAM latency that the engine's next DMAs may overlap. Other instructions hold their
    engine for all their `cycles` (`issue_cycles` equals them)."""

    cycles: int
    issue_cycles: int
    uses_dram: bool = False
    channel_cycles: int = 0
    macs: int = 0
    compute_bound_cycles: float = 0.0
    mac_energy_pj: float = 0.0
    traffic: Traffic = Traffic()


def engine_share(cost: Cost, outstanding: int) -> int:
    """Cycles one instruction takes of its engine in a long run of like ones: a DMA with
    `outstanding` in flight issues every max(S, (L + S) / k) cycles (module docstring)."""
    if not cost.uses_dram:
        return cost.cycles
    return max(cost.issue_cycles, ceil_div(cost.cycles, outstanding))


def dma_run_cycles(costs: Sequence[Cost], outstanding: int) -> int:
    """When the last of `costs`, DMAs of one engine, completes if each starts as early as the
    timing model lets it with nothing else on the channel, from cycle 0: s_0 = 0,
    s_i = max(s_(i-1) + S_(i-1), e_(i-k)), e_i = s_i + cycles_i. With k >= n DMAs that is
    L + S_0 + ... + S_(n-1), with k = 1 the sum of their cycles."""
    starts: list[int] = []
    ends: list[int] = []
    for i, cost in enumerate(costs):
        start = starts[-1] + costs[i - 1].issue_cycles if i else 0
        if i >= outstanding:
            start = max(start, ends[i - outstanding])
        starts.append(start)
        ends.append(start + cost.cycles)
    return ends[-1] if ends else 0


def _dma(size: int, config: AccelConfig, local_cycles: int, traffic: Traffic) -> Cost:
    """A DMA moving `size` bytes over the channel while its on-chip side takes `local_cycles`."""
    channel = ceil_div(size, config.dram_bytes_per_cycle)
    issue = max(channel, local_cycles)
    return Cost(config.dram_latency_cycles + issue, issue, True, channel, traffic=traffic)


def _load(f: Fields, config: AccelConfig) -> Cost:
    count = f["d"] * f["h"] * f["w"]
    # A stride-0 dimension broadcasts: its words cross the channel once.
    distinct = 1
    for extent, stride in ((f["d"], f["sd"]), (f["h"], f["sh"]), (f["w"], f["sw"])):
        distinct *= extent if stride else 1
    size = moved_bytes(distinct, f["bits"])
    if f["to_acc"]:
        local = Traffic(acc_write_bytes=ACC_WORD_BYTES * count)
        fill = ceil_div(count, config.accumulator_write_words_per_cycle)
        return _dma(size, config, fill, Traffic(dram_read_bytes=size) + local)
    return _dma(size, config, 0, Traffic(dram_read_bytes=size, sp_write_bytes=count))


def _store(f: Fields, config: AccelConfig) -> Cost:
    count = f["d"] * f["h"] * f["w"]
    size = moved_bytes(count, f["bits"])
    return _dma(size, config, 0, Traffic(dram_write_bytes=size, sp_read_bytes=count))


def _store_acc(f: Fields, config: AccelConfig) -> Cost:
    count = f["d"] * f["h"] * f["w"]
    size = moved_bytes(count, f["bits"])
    acc_words = count + 2 * f["d"]  # the block, then m0 and shift per depth slice
    traffic = Traffic(dram_write_bytes=size, acc_read_bytes=ACC_WORD_BYTES * acc_words)
    return _dma(size, config, ceil_div(count, config.vector_lanes), traffic)


def _conv(f: Fields, config: AccelConfig) -> Cost:
    groups, rows, cols = f["groups"], config.rows, config.cols
    m, k, n = f["oh"] * f["ow"], (f["c_in"] // groups) * f["kh"] * f["kw"], f["n"] // groups
    fa, fw = config.fusion(f["w_bits"], f["a_bits"])
    outputs_bytes = ACC_WORD_BYTES * m * n
    lane = config.edge_lane_bits_per_cycle
    if config.dataflow == "ws":
        k_folds, n_folds = ceil_div(k, rows * fa), ceil_div(n, cols * fw)
        folds = k_folds * n_folds
        # A column lane carries the fold's rows * fa * fw weights of its column.
        preload = ceil_div(rows * fa * fw * f["w_bits"], lane)
        cycles = preload + folds * max(m, preload) + (rows + cols - 2)
        sp_read = k * n + m * k * n_folds
        acc_write = outputs_bytes * k_folds
        acc_read = outputs_bytes * (k_folds - 1 + f["accumulate"])
    else:
        stream = ceil_div(k, fa * fw)
        folds = ceil_div(m, rows) * ceil_div(n, cols)
        # Row and column lanes carry a fold's K activations and K weights.
        fed = max(stream, ceil_div(k * f["a_bits"], lane), ceil_div(k * f["w_bits"], lane))
        cycles = folds * max(fed, rows) + (rows + cols - 2) + rows
        sp_read = k * n * ceil_div(m, rows) + m * k * ceil_div(n, cols)
        acc_write, acc_read = outputs_bytes, outputs_bytes * f["accumulate"]
    macs = groups * m * k * n
    per_group = Traffic(sp_read_bytes=sp_read, acc_read_bytes=acc_read, acc_write_bytes=acc_write)
    return Cost(
        cycles=groups * cycles,
        issue_cycles=groups * cycles,
        macs=macs,
        compute_bound_cycles=macs / (rows * cols * fa * fw),
        mac_energy_pj=macs * config.mac_energy_pj * f["w_bits"] * f["a_bits"] / 64,
        traffic=Traffic(*(groups * v for v in per_group.to_dict().values())),
    )


def _vector(f: Fields, config: AccelConfig, operands: int, param_words: int) -> Cost:
    count = f["count"]
    traffic = Traffic(
        sp_read_bytes=operands * count,
        sp_write_bytes=count,
        acc_read_bytes=ACC_WORD_BYTES * param_words,
    )
    cycles = ceil_div(count, config.vector_lanes)
    return Cost(cycles, cycles, traffic=traffic)


def _vadd(f: Fields, config: AccelConfig) -> Cost:
    return _vector(f, config, operands=2, param_words=4)


def _vrequant(f: Fields, config: AccelConfig) -> Cost:
    return _vector(f, config, operands=1, param_words=2)


def _vpool(f: Fields, config: AccelConfig) -> Cost:
    reads = f["c"] * f["oh"] * f["ow"] * f["kh"] * f["kw"]
    traffic = Traffic(sp_read_bytes=reads, sp_write_bytes=f["c"] * f["oh"] * f["ow"])
    cycles = ceil_div(reads, config.vector_lanes)
    return Cost(cycles, cycles, traffic=traffic)


_COSTS = {
    "load": _load,
    "store": _store,
    "store_acc": _store_acc,
    "conv": _conv,
    "vadd": _vadd,
    "vrequant": _vrequant,
    "vpool": _vpool,
}


class CostError(DopantError):
    """An instruction the machine cannot run, found while costing it; names the field."""


def instruction_cost(instruction: Instruction, config: AccelConfig) -> Cost:
    """The cost of `instruction` on `config`: the one definition that the timing model and the
    compiler's tiling both use."""
    f = instruction.fields()
    if instruction.op == "conv" and (
        f["groups"] < 1 or f["c_in"] % f["groups"] or f["n"] % f["groups"]
    ):
        raise CostError(
            f"conv field groups={f['groups']} does not divide c_in={f['c_in']} and n={f['n']}"
        )
    try:
        return _COSTS[instruction.op](f, config)
    except ConfigError as error:
        raise CostError(str(error)) from None


def fold_model_cycles(
    m: int, k: int, n: int, groups: int, w_bits: int, a_bits: int, config: AccelConfig
) -> int:
    """The standard systolic fold model of an untiled conv or linear layer: the independent
    reference that measured layer times are checked against (`benchmarks/compile.py`).

    The layer is `groups` GEMMs run one after another, each (m x k) by (k x n): m output
    pixels, k = (c_in / groups) * kh * kw, n = c_out / groups. With R x C the array, SCALE-Sim
    (Samajdar et al., ISPASS 2020; scale-sim-v2 `scalesim/compute/systolic_compute_ws.py` and
    `_os.py`, whose demand matrices have this many rows per fold) charges, nothing overlapped:

        weight stationary:  folds = ceil(K / R) * ceil(N / C),  per fold 2R + C + T - 2, T = M
        output stationary:  folds = ceil(M / R) * ceil(N / C),  per fold  R + C + T - 2, T = K

    (WS: R cycles to preload a fold's weights, then M rows stream with R + C - 2 of skew and
    drain; OS: K streams with the same skew, the outputs shifting out inside it.)

    BitFusion enters where this module's docstring puts it on the array: a PE holds
    fa = 8 / a_bits activations and fw = 8 / w_bits weights, so weight stationary covers
    K in rows of R * fa and N in columns of C * fw (folds = ceil(K / (R fa)) * ceil(N / (C fw)))
    and output stationary does fa * fw of an output's MACs a cycle (T = ceil(K / (fa fw))).
    Fusion widens a PE, not the array: the fill, skew and drain terms keep the physical R and
    C. At w8a8 (fa = fw = 1) this is SCALE-Sim's model exactly. ConfigError if the machine
    does not fuse to these widths.
    """
    rows, cols = config.rows, config.cols
    fa, fw = config.fusion(w_bits, a_bits)
    if config.dataflow == "ws":
        folds = ceil_div(k, rows * fa) * ceil_div(n, cols * fw)
        per_fold = 2 * rows + cols + m - 2
    else:
        folds = ceil_div(m, rows) * ceil_div(n, cols)
        per_fold = rows + cols + ceil_div(k, fa * fw) - 2
    return groups * folds * per_fold
