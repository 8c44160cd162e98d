"""What a loaded binary is: instructions, DRAM contents, I/O descriptors and a debug map
(layer ranges, intermediate values, each conv/linear layer's untiled GEMM).

`backend.binary` writes and reads these to and from `.dpb` bytes; `runtime.loader` validates
them; the simulator runs them (`Program.run`). No xDSL here.

DRAM model: byte addressed. An element of 8 bits or fewer occupies one byte of the functional
DRAM image (int8 or uint8); int32 words occupy four bytes, little endian, 4-byte aligned. The
DMA moves sub-byte data packed, so the timing model counts ceil(n * bits / 8) bytes for n
elements; the constants section of a binary stores sub-byte weights packed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dopant.backend.target import AccelConfig
from dopant.dialects.isa import Instruction


def element_bytes(bits: int) -> int:
    """Bytes one element occupies in the functional DRAM image (and on chip)."""
    return 4 if bits > 8 else 1


def storage_range(bits: int, signed: bool) -> tuple[int, int]:
    """The values an element of `bits` holds: [-2^(bits-1), 2^(bits-1)) or [0, 2^bits)."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def moved_bytes(count: int, bits: int) -> int:
    """Bytes the DMA moves for `count` elements of `bits` (sub-byte data travels packed)."""
    return -(-count * bits // 8)


@dataclass(frozen=True)
class TensorDesc:
    """A network input, output or (debug) intermediate value in DRAM, with the quantization
    that maps it to real values: real = scale * (q - zero_point), dense NCHW at `dram`."""

    name: str
    shape: tuple[int, ...]
    dram: int
    bits: int
    signed: bool
    scale: float
    zero_point: int

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))

    @property
    def qmin(self) -> int:
        return storage_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return storage_range(self.bits, self.signed)[1]


@dataclass(frozen=True, eq=False)
class Segment:
    """Constant data placed in DRAM before the program runs (weights, biases, multipliers)."""

    dram: int
    bits: int
    signed: bool
    values: np.ndarray  # int64, one entry per element

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Segment)
            and (self.dram, self.bits, self.signed) == (other.dram, other.bits, other.signed)
            and np.array_equal(self.values, other.values)
        )

    def __hash__(self) -> int:
        return hash((self.dram, self.bits, self.signed, len(self.values)))

    @property
    def end(self) -> int:
        return self.dram + len(self.values) * element_bytes(self.bits)


@dataclass(frozen=True)
class LayerRange:
    """Instructions [start, stop) belong to the layer at torch module path `name`."""

    name: str
    start: int
    stop: int


@dataclass(frozen=True)
class LayerGemm:
    """The untiled work of the conv or linear layer at torch module path `name`: `groups` GEMMs
    of (m x k) by (k x n) each (m output pixels, k = (c_in / groups) * kh * kw, n = c_out /
    groups) at the operand widths the array fuses to. The debug map keeps it so statistics can
    compare the layer's tiles with the standard fold model of the whole layer
    (`backend.costs.fold_model_cycles`)."""

    name: str
    m: int
    k: int
    n: int
    groups: int
    w_bits: int
    a_bits: int

    @property
    def macs(self) -> int:
        return self.groups * self.m * self.k * self.n


@dataclass(frozen=True)
class ProgramImage:
    """A complete accelerator program for one machine (`config_hash`): what a `.dpb` holds.

    `runtime.program.Program` adds running it on the simulator.
    """

    config_hash: bytes
    config: dict[str, object]  # the AccelConfig fields, as AccelConfig.to_dict() gives them
    instructions: tuple[Instruction, ...]
    segments: tuple[Segment, ...]
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]
    layers: tuple[LayerRange, ...]
    dram_bytes: int
    values: tuple[TensorDesc, ...] = ()  # debug map: where each layer's output is left in DRAM
    gemms: tuple[LayerGemm, ...] = ()  # debug map: each conv/linear layer's untiled GEMM
    source: str = ""  # debug map: "sha256:..." of the quantized IR's text, "" when unknown

    def accel_config(self) -> AccelConfig:
        """The machine this program was compiled for, rebuilt from `config`."""
        return AccelConfig.from_dict(dict(self.config), "the program's config")
