"""DRAM for a lowered network: one region per value, constants as `accel.segment`s.

Every value gets its own region (nothing is reused), in the order the network produces them;
an element of 8 bits or fewer takes one byte, an int32 four (`backend.image`), and every
region starts 4-byte aligned so int32 data is aligned. A reshape's result is its input's
region. Constants (weights at their own width, si32 biases and multiplier tables) are placed
the same way, each once even when several layers use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from xdsl.dialects.builtin import IntegerType, Signedness
from xdsl.ir import Operation, SSAValue

from dopant.backend.image import element_bytes
from dopant.dialects.accel import SegmentOp
from dopant.dialects.qnn.base import element, shape
from dopant.support.errors import DopantError

ALIGN = 4
SI32 = IntegerType(32, Signedness.SIGNED)


@dataclass
class Dram:
    """The DRAM map under construction: value regions and constant segments."""

    size: int = 0
    regions: dict[SSAValue, int] = field(default_factory=dict)
    segments: list[SegmentOp] = field(default_factory=list)
    _constants: dict[SSAValue, int] = field(default_factory=dict)

    def allocate(self, size: int) -> int:
        address = -(-self.size // ALIGN) * ALIGN
        self.size = address + size
        return address

    def value(self, value: SSAValue) -> int:
        """A new region for `value` (its elements at their DRAM width)."""
        elem = element(value)
        assert isinstance(elem, IntegerType), "integer IR"
        count = math.prod(shape(value))
        address = self.allocate(count * element_bytes(elem.width.data))
        self.regions[value] = address
        return address

    def alias(self, value: SSAValue, of: SSAValue) -> None:
        """`value` shares the region of `of` (same elements, same order)."""
        self.regions[value] = self.address(of)

    def address(self, value: SSAValue) -> int:
        if value not in self.regions:
            owner = value.owner
            where = owner.name if isinstance(owner, Operation) else "a block argument"
            raise DopantError(
                f"a value of {where} has no DRAM region: only a qnn.quantize of the input and "
                "lowered ops produce values on the accelerator."
            )
        return self.regions[value]

    def constant(self, value: SSAValue, data: np.ndarray, path: str) -> int:
        """A segment holding a constant operand (once per SSA value)."""
        if value not in self._constants:
            elem = element(value)
            assert isinstance(elem, IntegerType), "integer constants"
            self._constants[value] = self.segment(data, elem, path)
        return self._constants[value]

    def segment(self, data: np.ndarray, elem: IntegerType, path: str) -> int:
        """A segment holding `data` as elements of `elem`."""
        flat = np.ascontiguousarray(data).reshape(-1)
        address = self.allocate(flat.size * element_bytes(elem.width.data))
        self.segments.append(SegmentOp.make(address, flat, elem, path))
        return address

    def words(self, data: np.ndarray, path: str) -> int:
        """A segment of int32 words (multiplier tables)."""
        return self.segment(np.asarray(data, np.int64).astype(np.int32), SI32, path)

    @property
    def total(self) -> int:
        """Bytes of DRAM the program needs (a multiple of the alignment)."""
        return max(ALIGN, -(-self.size // ALIGN) * ALIGN)
