"""The functional simulator's memories as numpy images, and bounds-checked access to them.

Every image has a leading batch axis: row i is the machine of image i of a batch run, so each
instruction executes once for all images (`runtime.simulator`); a run of one image is a batch of
one. Addresses, bounds and the checks below are those of one machine, the same for every row.

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

import math
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


def which_image(bad: np.ndarray) -> str:
    """Where in a batch a problem is, for an error message: `bad` flags the offending elements
    of a [batch, ...] array; empty for a batch of one (there is no other image to tell apart)."""
    if len(bad) < 2:
        return ""
    rows = bad.reshape(len(bad), -1).any(axis=1)
    return f" (image {int(np.argmax(rows))} of the batch of {len(bad)})"


def check_fits(values: np.ndarray, bits: int, signed: bool, what: str) -> None:
    """Refuse `values` ([batch, ...]) that an element of `bits` cannot hold (nothing wraps
    silently); the message names the first image at fault in a batch."""
    lo, hi = storage_range(bits, signed)
    if values.size and (values.min() < lo or values.max() > hi):
        kind = f"{'' if signed else 'u'}int{bits}"
        raise SimulationError(
            f"{what} holds values in [{values.min()}, {values.max()}], which do not fit "
            f"{kind} elements [{lo}, {hi}]{which_image((values < lo) | (values > hi))}"
        )


def dram_block(
    dram: np.ndarray,
    address: int,
    shape: Sequence[int],
    strides: Sequence[int],
    bits: int,
    signed: bool,
) -> np.ndarray:
    """A (writable) strided view [batch, *shape] of DRAM elements: in every image, element
    `idx` is at byte address + sum(idx * strides) * element_bytes(bits). Strides count
    elements; 0 broadcasts."""
    size = element_bytes(bits)
    dtype = _dram_dtype(bits, signed)
    batch, dram_bytes = dram.shape
    if 0 in shape:
        return np.zeros((batch, *shape), dtype)
    last = address + sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) * size
    if address < 0 or last + size > dram_bytes:
        raise SimulationError(
            f"DRAM bytes [{address}, {last + size}) lie outside the {dram_bytes}-byte DRAM"
        )
    return np.ndarray(
        (batch, *shape),
        dtype,
        buffer=dram,
        offset=address,
        strides=(dram.strides[0], *(s * size for s in strides)),
    )


def write_dense(
    dram: np.ndarray, address: int, values: np.ndarray, bits: int, signed: bool
) -> None:
    """Write each image's row of `values` ([batch, ...], or [1, ...] for the same data in every
    image: a constant) as consecutive elements of `bits` from byte `address`, checking they
    fit."""
    array = np.asarray(values)
    flat = array.reshape(len(array), -1)
    check_fits(flat, bits, signed, f"data for DRAM byte {address}")
    dram_block(dram, address, (flat.shape[1],), (1,), bits, signed)[...] = flat


def read_dense(dram: np.ndarray, address: int, count: int, bits: int, signed: bool) -> np.ndarray:
    """`count` consecutive elements of `bits` from byte `address` in every image, as int64
    [batch, count]."""
    return dram_block(dram, address, (count,), (1,), bits, signed).astype(np.int64)


@dataclass(frozen=True)
class Memories:
    """The three memory images of a batch run, one row per image (mutated in place)."""

    dram: np.ndarray  # uint8[batch, dram_bytes]
    sp: np.ndarray  # int32[batch, scratchpad_bytes], one element per byte address
    acc: np.ndarray  # int64[batch, accumulator_words], each holding an int32 value

    @staticmethod
    def empty(config: AccelConfig, dram_bytes: int, batch: int = 1) -> Memories:
        return Memories(
            dram=np.zeros((batch, dram_bytes), np.uint8),
            sp=np.zeros((batch, config.scratchpad_bytes), np.int32),
            acc=np.zeros((batch, config.accumulator_words), np.int64),
        )

    @property
    def batch(self) -> int:
        return len(self.dram)

    def sp_span(self, field: str, start: int, *shape: int) -> np.ndarray:
        """The view sp[:, start:start + prod(shape)] as [batch, *shape] (dense, row-major),
        which field `field` addresses."""
        return _span(self.sp, "byte scratchpad", field, start, shape)

    def acc_span(self, field: str, start: int, *shape: int) -> np.ndarray:
        """The view acc[:, start:start + prod(shape)] as [batch, *shape], which field `field`
        addresses."""
        return _span(self.acc, "word accumulator", field, start, shape)


def _span(
    memory: np.ndarray, name: str, field: str, start: int, shape: tuple[int, ...]
) -> np.ndarray:
    count, size = math.prod(shape), memory.shape[1]
    if start < 0 or start + count > size:
        raise SimulationError(
            f"field {field}={start} with {count} elements runs past the {size}-{name}"
        )
    # Built as a view, never a copy (as a reshape may be): instructions write through it.
    item = memory.itemsize
    dense = [item * math.prod(shape[i + 1 :]) for i in range(len(shape))]
    return np.ndarray(
        (len(memory), *shape),
        memory.dtype,
        buffer=memory,
        offset=start * item,
        strides=(memory.strides[0], *dense),
    )
