"""Constants and types of the `.dpb` format shared by its writer and reader (see binary.py)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from dopant.dialects.isa import INSTRUCTION_BYTES
from dopant.support.errors import DopantError

MAGIC = b"DOPANTPB"
FORMAT_VERSION = 4  # 2: DEBUG holds layer ranges and intermediate values; 3: and layer GEMMs;
# 4: and the digest of the quantized IR the program was compiled from
HEADER = struct.Struct("<8sHHI32sQQ")
ENTRY = struct.Struct("<HHIQQ")
SEGMENT = struct.Struct("<QBBHII")
COUNT = struct.Struct("<I")
TRAILER_BYTES = 32
ALIGN_BYTES = 8
# Limits on what a binary may ask for, checked before anything of that size is allocated.
MAX_SECTION_BYTES = 1 << 30
MAX_FILE_BYTES = 2 << 30
MAX_DRAM_BYTES = 1 << 30
MAX_ELEMENTS = 1 << 28
MAX_INSTRUCTIONS = MAX_SECTION_BYTES // INSTRUCTION_BYTES
MAX_RANK = 8
MAX_MEMORY_KIB = 1 << 20  # on-chip memories of at most 1 GiB, so a simulator can allocate them
CONST_BITS = (2, 4, 8, 32)
TENSOR_BITS = (2, 3, 4, 5, 6, 7, 8, 32)
TENSOR_KEYS = ("name", "shape", "dram", "bits", "signed", "scale", "zero_point")
GEMM_KEYS = ("name", "m", "k", "n", "groups", "w_bits", "a_bits")  # as LayerGemm's fields


class BinaryError(DopantError):
    """A `.dpb` binary that cannot be written, read or loaded; names the byte offset or field."""


class SectionKind(IntEnum):
    CONFIG = 1
    CODE = 2
    CONST = 3
    IO = 4
    DEBUG = 5


@dataclass(frozen=True)
class Container:
    """A binary whose header, section table and checksums are checked: `sections` maps each
    kind to its (file offset, size) in `data`."""

    data: bytes
    config_hash: bytes
    sections: dict[SectionKind, tuple[int, int]]

    def payload(self, kind: SectionKind) -> bytes:
        offset, size = self.sections[kind]
        return self.data[offset : offset + size]

    def where(self, kind: SectionKind) -> str:
        return f"the {kind.name} section (byte offset {self.sections[kind][0]})"


def align(offset: int) -> int:
    return -(-offset // ALIGN_BYTES) * ALIGN_BYTES


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_padding(data: bytes, start: int, stop: int) -> None:
    if any(data[start:stop]):
        raise BinaryError(f"the alignment padding at byte offset {start} is not zero")


def refuse_first(where: str, *checks: tuple[bool, str]) -> None:
    """Raise a BinaryError for the first check that failed, prefixed by `where`."""
    for failed, problem in checks:
        if failed:
            raise BinaryError(f"{where}: {problem}")
