"""The functional simulator's memories as numpy images, and bounds-checked access to them.

- DRAM: uint8, byte addressed. An element of 8 bits or fewer takes one byte (int8 or uint8 by
  its signedness), an int32 word four bytes, little endian (`backend.image`).
- Scratchpad: one element per byte address; kept as int32 so that every operand width fits
  without casts (the hardware stores a byte, so values are checked to fit when they leave).
- Accumulator: one int32 word per address; kept as int64 so a convolution's sum can be checked
  to fit int32 after it is formed instead of wrapping silently (as `runtime.reference` does).

Every access checks its bounds and raises SimulationError: numpy slicing would quietly clip an
out-of-range span and give wrong values instead of an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dopant.backend.image import element_bytes, storage_range
from dopant.backend.target import AccelConfig
from dopant.runtime.queues import SimulationError


def _dram_dtype(bits: int, signed: bool) -> np.dtype:
    """How one element is stored in the DRAM image: one byte or a little-endian 32-bit word."""
    if element_bytes(bits) == 1:
        return np.dtype(np.int8 if signed else np.uint8)
    return np.dtype("<i4" if signed else "<u4")


def check_fits(values: np.ndarray, bits: int, signed: bool, what: str) -> None:
    """Refuse `values` that an element of `bits` cannot hold (nothing wraps silently)."""
    lo, hi = storage_range(bits, signed)
    if values.size and (values.min() < lo or values.max() > hi):
        kind = f"{'' if signed else 'u'}int{bits}"
        raise SimulationError(
            f"{what} holds values in [{values.min()}, {values.max()}], which do not fit "
            f"{kind} elements [{lo}, {hi}]"
        )


def dram_block(
    dram: np.ndarray,
    address: int,
    shape: Sequence[int],
    strides: Sequence[int],
    bits: int,
    signed: bool,
) -> np.ndarray:
    """A (writable) strided view of DRAM elements: element `idx` is at byte
    address + sum(idx * strides) * element_bytes(bits). Strides count elements; 0 broadcasts."""
    size = element_bytes(bits)
    dtype = _dram_dtype(bits, signed)
    if 0 in shape:
        return np.zeros(tuple(shape), dtype)
    last = address + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) * size
    if address < 0 or last + size > len(dram):
        raise SimulationError(
            f"DRAM bytes [{address}, {last + size}) lie outside the {len(dram)}-byte DRAM"
        )
    return np.ndarray(
        tuple(shape), dtype, buffer=dram, offset=address, strides=tuple(s * size for s in strides)
    )


def write_dense(
    dram: np.ndarray, address: int, values: np.ndarray, bits: int, signed: bool
) -> None:
    """Write `values` as consecutive elements of `bits` from byte `address`, checking they fit."""
    flat = np.asarray(values).reshape(-1)
    check_fits(flat, bits, signed, f"data for DRAM byte {address}")
    dram_block(dram, address, (flat.size,), (1,), bits, signed)[:] = flat


def read_dense(dram: np.ndarray, address: int, count: int, bits: int, signed: bool) -> np.ndarray:
    """`count` consecutive elements of `bits` from byte `address`, as int64."""
    return dram_block(dram, address, (count,), (1,), bits, signed).astype(np.int64)


@dataclass(frozen=True)
class Memories:
    """The three memory images of one run (the arrays are mutated in place)."""

    dram: np.ndarray  # uint8[dram_bytes]
    sp: np.ndarray  # int32[scratchpad_bytes], one element per byte address
    acc: np.ndarray  # int64[accumulator_words], each holding an int32 value

    @staticmethod
    def empty(config: AccelConfig, dram_bytes: int) -> Memories:
        return Memories(
            dram=np.zeros(dram_bytes, np.uint8),
            sp=np.zeros(config.scratchpad_bytes, np.int32),
            acc=np.zeros(config.accumulator_words, np.int64),
        )

    def sp_span(self, field: str, start: int, count: int) -> np.ndarray:
        """The view sp[start:start + count], which field `field` addresses."""
        return _span(self.sp, "byte scratchpad", field, start, count)

    def acc_span(self, field: str, start: int, count: int) -> np.ndarray:
        """The view acc[start:start + count], which field `field` addresses."""
        return _span(self.acc, "word accumulator", field, start, count)


def _span(memory: np.ndarray, name: str, field: str, start: int, count: int) -> np.ndarray:
    if start < 0 or start + count > len(memory):
        raise SimulationError(
            f"field {field}={start} with {count} elements runs past the {len(memory)}-{name}"
        )
    return memory[start : start + count]
