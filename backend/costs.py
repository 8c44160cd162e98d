"""What one instruction costs on the modeled machine, from its fields and the AccelConfig alone:
engine cycles, DRAM channel occupancy, MACs, bytes moved per memory level and MAC energy.

No values are computed or read here (the timing model never looks at data). The formulas, with
R x C the array (`rows` x `cols`), bw = `dram_bytes_per_cycle`, L = `dram_latency_cycles`,
V = `vector_lanes`, and ceil(a / b) written a /^ b:

- load / store: B = program.moved_bytes(d*h*w, bits) bytes (sub-byte data travels packed; a
  load counts its whole block, padding included). The channel is held B /^ bw cycles from the
  transfer start; the instruction completes L + B /^ bw cycles after it (latency pipelines: it
  does not hold the channel, but the engine waits for completion).
- store_acc: completes L + max(B /^ bw, d*h*w /^ V) after its transfer start: the requantizer
  streams V elements per cycle, the channel whichever is slower.
- conv, per group (groups run one after another), with M = oh*ow, K = (c_in/groups)*kh*kw,
  N = n/groups and (fa, fw) = config.fusion(w_bits, a_bits) (BitFusion):
  weight stationary: folds = K /^ (R*fa) * N /^ (C*fw); each fold's weights preload in R cycles,
  double-buffered behind the previous fold's stream, so cycles = R (first preload) +
  folds * max(M, R) + (R + C - 2) (skew and drain of the last fold);
  output stationary: folds = M /^ R * N /^ C; K streams in T = K /^ (fa*fw) cycles per fold and
  the previous fold's outputs drain under it, so cycles = folds * max(T, R) + (R + C - 2) + R
  (skew, then the final drain).
  `fold_model_cycles` (below) is the standard reference for a whole layer, not a cost.
  `compute_bound_cycles` = MACs / (R*C*fa*fw), the array at its peak.
- vadd / vrequant: count /^ V; vpool: c*oh*ow*kh*kw /^ V (every window element is one lane-op).

Bytes per memory level (what `RunStats` adds up and prices with the config's pJ/byte):
- DRAM: B above, read by loads, written by stores and store_acc.
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
  words; vadd/vrequant read their 4/2 parameter words.
- MAC energy: MACs * mac_energy_pj * (w_bits * a_bits) / 64: a w x a product uses
  (w/2)*(a/2) of a PE's sixteen 2-bit bricks (BitFusion), and mac_energy_pj is the 8x8 MAC's.
"""

from __future__ import annotations

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
    """One instruction's cost. For a DRAM instruction `cycles` run from its transfer start."""

    cycles: int
    uses_dram: bool = False
    channel_cycles: int = 0
    macs: int = 0
    compute_bound_cycles: float = 0.0
    mac_energy_pj: float = 0.0
    traffic: Traffic = Traffic()


def _transfer(f: Fields, config: AccelConfig, stream_cycles: int = 0) -> tuple[int, int, int]:
    """(bytes, channel cycles, cycles to completion) of a DMA moving d*h*w elements."""
    size = moved_bytes(f["d"] * f["h"] * f["w"], f["bits"])
    channel = ceil_div(size, config.dram_bytes_per_cycle)
    return size, channel, config.dram_latency_cycles + max(channel, stream_cycles)


def _load(f: Fields, config: AccelConfig) -> Cost:
    count = f["d"] * f["h"] * f["w"]
    size, channel, cycles = _transfer(f, config)
    local = (
        Traffic(acc_write_bytes=ACC_WORD_BYTES * count)
        if f["to_acc"]
        else Traffic(sp_write_bytes=count)
    )
    return Cost(cycles, True, channel, traffic=Traffic(dram_read_bytes=size) + local)


def _store(f: Fields, config: AccelConfig) -> Cost:
    size, channel, cycles = _transfer(f, config)
    count = f["d"] * f["h"] * f["w"]
    return Cost(cycles, True, channel, traffic=Traffic(dram_write_bytes=size, sp_read_bytes=count))


def _store_acc(f: Fields, config: AccelConfig) -> Cost:
    count = f["d"] * f["h"] * f["w"]
    size, channel, cycles = _transfer(f, config, ceil_div(count, config.vector_lanes))
    acc_words = count + 2 * f["d"]  # the block, then m0 and shift per depth slice
    traffic = Traffic(dram_write_bytes=size, acc_read_bytes=ACC_WORD_BYTES * acc_words)
    return Cost(cycles, True, channel, traffic=traffic)


def _conv(f: Fields, config: AccelConfig) -> Cost:
    groups, rows, cols = f["groups"], config.rows, config.cols
    m, k, n = f["oh"] * f["ow"], (f["c_in"] // groups) * f["kh"] * f["kw"], f["n"] // groups
    fa, fw = config.fusion(f["w_bits"], f["a_bits"])
    outputs_bytes = ACC_WORD_BYTES * m * n
    if config.dataflow == "ws":
        k_folds, n_folds = ceil_div(k, rows * fa), ceil_div(n, cols * fw)
        folds = k_folds * n_folds
        cycles = rows + folds * max(m, rows) + (rows + cols - 2)
        sp_read = k * n + m * k * n_folds
        acc_write = outputs_bytes * k_folds
        acc_read = outputs_bytes * (k_folds - 1 + f["accumulate"])
    else:
        stream = ceil_div(k, fa * fw)
        folds = ceil_div(m, rows) * ceil_div(n, cols)
        cycles = folds * max(stream, rows) + (rows + cols - 2) + rows
        sp_read = k * n * ceil_div(m, rows) + m * k * ceil_div(n, cols)
        acc_write, acc_read = outputs_bytes, outputs_bytes * f["accumulate"]
    macs = groups * m * k * n
    per_group = Traffic(sp_read_bytes=sp_read, acc_read_bytes=acc_read, acc_write_bytes=acc_write)
    return Cost(
        cycles=groups * cycles,
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
    return Cost(ceil_div(count, config.vector_lanes), traffic=traffic)


def _vadd(f: Fields, config: AccelConfig) -> Cost:
    return _vector(f, config, operands=2, param_words=4)


def _vrequant(f: Fields, config: AccelConfig) -> Cost:
    return _vector(f, config, operands=1, param_words=2)


def _vpool(f: Fields, config: AccelConfig) -> Cost:
    reads = f["c"] * f["oh"] * f["ow"] * f["kh"] * f["kw"]
    traffic = Traffic(sp_read_bytes=reads, sp_write_bytes=f["c"] * f["oh"] * f["ow"])
    return Cost(ceil_div(reads, config.vector_lanes), traffic=traffic)


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
