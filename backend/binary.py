"""The `.dpb` container: a `ProgramImage` to bytes and back, refusing anything malformed.

Layout (integers little endian):

- header, 64 bytes: magic b"DOPANTPB" | format version u16 | section count u16 | reserved u32 |
  config hash (32 bytes, `AccelConfig.stable_hash()`) | total file size u64 | reserved u64;
- section table, 24 bytes per section: kind u16 | reserved u16 | crc32 u32 | offset u64 | size u64;
- the sections, each starting at the first 8-byte boundary after the previous one (zero padding);
- trailer: SHA-256 of everything before it, at the first 8-byte boundary after the last section.

Sections (each exactly once): CONFIG (JSON of `AccelConfig.to_dict()`), CODE (32-byte
instructions), CONST (u32 count, then per segment a 20-byte header dram u64 | bits u8 |
signed u8 | reserved u16 | count u32 | data bytes u32 and the data, the whole record zero-padded
to a multiple of 8 bytes, so the data always starts 8-byte aligned; elements of 8 bits or fewer
are packed LSB first, int32 words little endian), IO (JSON {"dram_bytes", "inputs", "outputs"})
and DEBUG (JSON list of {"name", "start", "stop"}). JSON is UTF-8 with sorted keys and compact
separators; floats are written by `repr`, so they read back exactly.

`read_program` checks the container (layout, checksums, types, sizes); `runtime.loader` checks
what the program means for the machine. No xDSL here: the simulator side reads binaries.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from dopant.backend.isa import INSTRUCTION_BYTES, Instruction, IsaError, decode, encode
from dopant.backend.program import LayerRange, ProgramImage, Segment, TensorDesc
from dopant.backend.target import AccelConfig
from dopant.dialects.errors import DopantError
from dopant.dialects.files import write_atomic

MAGIC = b"DOPANTPB"
FORMAT_VERSION = 1
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


def _align(offset: int) -> int:
    return -(-offset // ALIGN_BYTES) * ALIGN_BYTES


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- writing ------------------------------------------------------------------------------


def write_program(program: ProgramImage) -> bytes:
    """The `.dpb` bytes of `program`: the same ProgramImage always gives the same bytes.

    Refuses (BinaryError) what `read_program` would refuse: a config hash that is not the
    config's, instructions whose fields do not fit, constants outside their bit width, I/O or
    debug entries of the wrong type, sizes over the limits.
    """
    sections = (
        (SectionKind.CONFIG, _config_bytes(program)),
        (SectionKind.CODE, _code_bytes(program.instructions)),
        (SectionKind.CONST, _const_bytes(program.segments)),
        (SectionKind.IO, _io_bytes(program)),
        (SectionKind.DEBUG, _debug_bytes(program.layers)),
    )
    table_end = HEADER.size + len(sections) * ENTRY.size
    entries, body = bytearray(), bytearray()
    for kind, payload in sections:
        if len(payload) > MAX_SECTION_BYTES:
            raise BinaryError(
                f"the {kind.name} section would be {len(payload)} bytes, over the "
                f"{MAX_SECTION_BYTES}-byte limit"
            )
        offset = _align(table_end + len(body))
        body += bytes(offset - table_end - len(body)) + payload
        entries += ENTRY.pack(kind, 0, zlib.crc32(payload), offset, len(payload))
    body += bytes(_align(table_end + len(body)) - table_end - len(body))
    total = table_end + len(body) + TRAILER_BYTES
    header = HEADER.pack(MAGIC, FORMAT_VERSION, len(sections), 0, program.config_hash, total, 0)
    content = header + entries + body
    return bytes(content) + hashlib.sha256(content).digest()


def save_program(program: ProgramImage, path: str | os.PathLike[str]) -> None:
    """Write `program` to `path` atomically (a failure leaves no half-written file)."""
    write_atomic(path, write_program(program))


def _dumps(value: object, what: str) -> bytes:
    def plain(item: object) -> object:
        # numpy scalars (shapes and scales computed with numpy) are written as Python numbers.
        if isinstance(item, np.generic):
            return item.item()
        raise TypeError(f"{type(item).__name__} is not a JSON value")

    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=plain
        )
    except (TypeError, ValueError) as error:
        raise BinaryError(f"the {what} section cannot be written as JSON: {error}") from None
    return text.encode()


def _config_bytes(program: ProgramImage) -> bytes:
    if len(program.config_hash) != 32:
        raise BinaryError(
            f"field config_hash is {len(program.config_hash)} bytes; it must be the 32-byte "
            "AccelConfig.stable_hash()"
        )
    payload = _dumps(program.config, "CONFIG")
    machine = _machine(_loads(payload, "the CONFIG section"), "the CONFIG section")
    if machine.stable_hash() != program.config_hash:
        raise BinaryError(
            f"field config_hash is not the hash of the program's config '{machine.name}'"
        )
    return payload


def _code_bytes(instructions: tuple[Instruction, ...]) -> bytes:
    words = []
    for index, instruction in enumerate(instructions):
        fields = {k: v for k, v in instruction.values if k != "opcode"}
        try:
            # `encode` silently truncates; rebuilding through `make` checks every field's range.
            checked = Instruction.make(instruction.op, **fields)
        except IsaError as error:
            raise BinaryError(f"instruction {index} cannot be encoded: {error}") from None
        if checked != instruction:
            raise BinaryError(
                f"instruction {index} ('{instruction.op}') does not list its fields in ISA "
                "table order with the right opcode; build it with Instruction.make"
            )
        words.append(encode(instruction))
    return b"".join(words)


def _const_bytes(segments: tuple[Segment, ...]) -> bytes:
    out, elements = bytearray(COUNT.pack(len(segments))), 0
    for index, segment in enumerate(segments):
        where = f"constant segment {index}"
        values = np.asarray(segment.values)
        if segment.bits not in CONST_BITS:
            raise BinaryError(f"{where}: field bits={segment.bits} is not one of {CONST_BITS}")
        if segment.bits == 32 and not segment.signed:
            raise BinaryError(f"{where}: field signed must be true for 32-bit (int32) data")
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise BinaryError(f"{where}: field values must be a 1-D integer array")
        if not 0 <= segment.dram <= MAX_DRAM_BYTES:
            raise BinaryError(
                f"{where}: field dram={segment.dram} is outside [0, {MAX_DRAM_BYTES}]"
            )
        elements += len(values)
        if elements > MAX_ELEMENTS:
            raise BinaryError(f"{where}: field values takes the constants past {MAX_ELEMENTS}")
        low, high = _value_range(segment.bits, segment.signed)
        if len(values) and (values.min() < low or values.max() > high):
            raise BinaryError(
                f"{where}: field values holds numbers outside [{low}, {high}] of "
                f"{segment.bits}-bit {'signed' if segment.signed else 'unsigned'} data"
            )
        data = _pack(values.astype(np.int64), segment.bits)
        header = SEGMENT.pack(segment.dram, segment.bits, segment.signed, 0, len(values), len(data))
        record = header + data
        out += record + bytes(_align(len(record)) - len(record))
    return bytes(out)


def _io_bytes(program: ProgramImage) -> bytes:
    def tensor(desc: TensorDesc) -> dict[str, object]:
        # An integer scale is written as a float, so a re-written binary has the same bytes.
        real = isinstance(desc.scale, int | float | np.number) and not isinstance(desc.scale, bool)
        scale = float(desc.scale) if real else desc.scale
        return {
            "name": desc.name,
            "shape": list(desc.shape),
            "dram": desc.dram,
            "bits": desc.bits,
            "signed": desc.signed,
            "scale": scale,
            "zero_point": desc.zero_point,
        }

    io = {
        "dram_bytes": program.dram_bytes,
        "inputs": [tensor(t) for t in program.inputs],
        "outputs": [tensor(t) for t in program.outputs],
    }
    payload = _dumps(io, "IO")
    _io_from_json(_loads(payload, "the IO section"), "the IO section")  # refuse what reads fail
    return payload


def _debug_bytes(layers: tuple[LayerRange, ...]) -> bytes:
    debug = [{"name": r.name, "start": r.start, "stop": r.stop} for r in layers]
    payload = _dumps(debug, "DEBUG")
    _layers_from_json(_loads(payload, "the DEBUG section"), "the DEBUG section")
    return payload


def _value_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _packed_bytes(count: int, bits: int) -> int:
    return count * 4 if bits == 32 else -(-count * bits // 8)


def _pack(values: np.ndarray, bits: int) -> bytes:
    if bits == 32:
        return values.astype("<i4").tobytes()
    per_byte = 8 // bits
    fields = (values & ((1 << bits) - 1)).astype(np.uint8)
    fields = np.concatenate([fields, np.zeros(-len(fields) % per_byte, np.uint8)])
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(fields.reshape(-1, per_byte) << shifts, axis=1).tobytes()


def _unpack(data: bytes, count: int, bits: int, signed: bool, where: str) -> np.ndarray:
    if bits == 32:
        return np.frombuffer(data, dtype="<i4").astype(np.int64)
    per_byte = 8 // bits
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    packed = np.frombuffer(data, dtype=np.uint8)
    fields = ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)
    if fields[count:].any():
        raise BinaryError(f"{where}: the unused bits after its last element are not zero")
    values = fields[:count].astype(np.int64)
    if signed:
        values -= (values >> (bits - 1)) << bits
    return values


# ---- reading the container ----------------------------------------------------------------


def read_binary_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the binary at `path`; refuses a missing, unreadable or absurdly large file."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BinaryError(
                f"binary file '{file}' is {size} bytes, over the {MAX_FILE_BYTES}-byte limit"
            )
        return file.read_bytes()
    except FileNotFoundError:
        raise BinaryError(f"binary file '{file}' does not exist") from None
    except OSError as error:
        raise BinaryError(f"cannot read binary file '{file}': {error.strerror}") from None


def read_container(data: bytes) -> Container:
    """Check the header, the section table, the padding and every checksum of `data`."""
    data = bytes(data)
    size = len(data)
    if data[: len(MAGIC)] != MAGIC[:size]:  # a prefix of the magic is a truncated binary
        raise BinaryError(
            f"not a dopant binary: the magic at byte offset 0 is {_show(data[:8])}, not {MAGIC!r}"
        )
    if size < HEADER.size + TRAILER_BYTES:
        raise BinaryError(
            f"truncated binary: it ends at byte offset {size}, inside the {HEADER.size}-byte "
            f"header and {TRAILER_BYTES}-byte checksum that every binary has"
        )
    if size > MAX_FILE_BYTES:
        raise BinaryError(f"the binary is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    _, version, count, reserved, config_hash, total, reserved2 = HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise BinaryError(
            f"unsupported format version {version} at byte offset 8; this dopant reads "
            f"version {FORMAT_VERSION}"
        )
    if total != size:
        raise BinaryError(
            f"the file size at byte offset 48 says {total} bytes but the binary has {size}: "
            "it is truncated or has bytes appended"
        )
    if hashlib.sha256(data[:-TRAILER_BYTES]).digest() != data[-TRAILER_BYTES:]:
        raise BinaryError(
            f"checksum mismatch: the SHA-256 at byte offset {size - TRAILER_BYTES} does not "
            "match the bytes before it, so the binary is corrupt"
        )
    if reserved or reserved2:
        at = 12 if reserved else 56
        raise BinaryError(f"the reserved header field at byte offset {at} is not zero")
    return Container(data, config_hash, _section_table(data, count))


def _section_table(data: bytes, count: int) -> dict[SectionKind, tuple[int, int]]:
    sections_end = len(data) - TRAILER_BYTES
    previous_end = HEADER.size + count * ENTRY.size
    if previous_end > sections_end:
        raise BinaryError(
            f"the section count {count} at byte offset 10 makes the section table run past "
            f"byte {sections_end}"
        )
    sections: dict[SectionKind, tuple[int, int]] = {}
    for index in range(count):
        at = HEADER.size + index * ENTRY.size
        kind_id, reserved, crc, offset, length = ENTRY.unpack_from(data, at)
        where = f"section table entry {index} (byte offset {at})"
        if kind_id not in {kind.value for kind in SectionKind}:
            raise BinaryError(f"{where} has unknown section kind {kind_id}")
        kind = SectionKind(kind_id)
        _refuse_first(
            f"{where} for the {kind.name} section",
            (kind in sections, f"repeats the {kind.name} section"),
            (reserved != 0, "has a non-zero reserved field"),
            (length > MAX_SECTION_BYTES, f"gives {length} bytes, over {MAX_SECTION_BYTES}"),
            (offset % ALIGN_BYTES != 0, f"gives offset {offset}, not 8-byte aligned"),
            (
                offset + length > sections_end,
                f"gives [{offset}, {offset + length}), past the checksum at byte {sections_end}",
            ),
            (offset < previous_end, f"gives offset {offset}, before byte {previous_end}"),
            (offset != _align(previous_end), f"leaves a gap after byte {previous_end}"),
            (
                zlib.crc32(data[offset : offset + length]) != crc,
                "has a crc32 that does not match the section's bytes",
            ),
        )
        _check_padding(data, previous_end, offset)
        sections[kind] = (offset, length)
        previous_end = offset + length
    missing = [kind.name for kind in SectionKind if kind not in sections]
    if missing:
        raise BinaryError(f"the section table at byte offset 64 lacks {', '.join(missing)}")
    if _align(previous_end) != sections_end:
        raise BinaryError(
            f"byte offset {previous_end}: {sections_end - previous_end} bytes between the last "
            "section and the checksum belong to no section"
        )
    _check_padding(data, previous_end, sections_end)
    return sections


def _refuse_first(where: str, *checks: tuple[bool, str]) -> None:
    """Raise a BinaryError for the first check that failed, prefixed by `where`."""
    for failed, problem in checks:
        if failed:
            raise BinaryError(f"{where}: {problem}")


def _check_padding(data: bytes, start: int, stop: int) -> None:
    if any(data[start:stop]):
        raise BinaryError(f"the alignment padding at byte offset {start} is not zero")


# ---- reading the sections -----------------------------------------------------------------


def read_program(data: bytes) -> ProgramImage:
    """The ProgramImage in `data`; BinaryError (naming the byte offset or field) if malformed."""
    return decode_program(read_container(data))


def decode_program(container: Container) -> ProgramImage:
    """The ProgramImage in a checked container: every section parsed, typed and size-checked."""
    where = container.where(SectionKind.CONFIG)
    machine = _machine(_loads(container.payload(SectionKind.CONFIG), where), where)
    if machine.stable_hash() != container.config_hash:
        raise BinaryError(
            f"the config hash at byte offset 16 is not the hash of the embedded config "
            f"'{machine.name}' in {where}"
        )
    where = container.where(SectionKind.IO)
    dram_bytes, inputs, outputs = _io_from_json(
        _loads(container.payload(SectionKind.IO), where), where
    )
    where = container.where(SectionKind.DEBUG)
    layers = _layers_from_json(_loads(container.payload(SectionKind.DEBUG), where), where)
    return ProgramImage(
        config_hash=container.config_hash,
        config=machine.to_dict(),
        instructions=_code(container),
        segments=_segments(container),
        inputs=inputs,
        outputs=outputs,
        layers=layers,
        dram_bytes=dram_bytes,
    )


def _code(container: Container) -> tuple[Instruction, ...]:
    offset, size = container.sections[SectionKind.CODE]
    if size % INSTRUCTION_BYTES:
        raise BinaryError(
            f"{container.where(SectionKind.CODE)} is {size} bytes, not a multiple of the "
            f"{INSTRUCTION_BYTES}-byte instruction"
        )
    instructions = []
    for index in range(size // INSTRUCTION_BYTES):
        try:
            instructions.append(decode(container.data, offset + index * INSTRUCTION_BYTES))
        except IsaError as error:
            raise BinaryError(f"instruction {index}: {error}") from None
    return tuple(instructions)


def _segments(container: Container) -> tuple[Segment, ...]:
    base, size = container.sections[SectionKind.CONST]
    data = container.payload(SectionKind.CONST)
    if size < COUNT.size:
        raise BinaryError(f"{container.where(SectionKind.CONST)} is too short for its count")
    (count,) = COUNT.unpack_from(data)
    if count * SEGMENT.size > size - COUNT.size:
        raise BinaryError(
            f"the segment count {count} at byte offset {base} does not fit the "
            f"{size}-byte CONST section"
        )
    segments, at, elements = [], COUNT.size, 0
    for index in range(count):
        where = f"constant segment {index} (byte offset {base + at})"
        if at + SEGMENT.size > size:
            raise BinaryError(f"{where}: its header runs past the end of the CONST section")
        dram, bits, signed, reserved, length, data_bytes = SEGMENT.unpack_from(data, at)
        elements += length
        _refuse_first(
            where,
            (bits not in CONST_BITS, f"bits={bits} is not one of {CONST_BITS}"),
            (signed > 1, f"signed={signed} is not 0 or 1"),
            (bits == 32 and not signed, "signed must be 1 for 32-bit (int32) data"),
            (reserved != 0, "the reserved field is not zero"),
            (elements > MAX_ELEMENTS, f"count={length} takes the constants past {MAX_ELEMENTS}"),
            (dram > MAX_DRAM_BYTES, f"dram={dram} is past the {MAX_DRAM_BYTES}-byte DRAM limit"),
            (
                data_bytes != _packed_bytes(length, bits),
                f"data bytes={data_bytes}, but {length} {bits}-bit elements take "
                f"{_packed_bytes(length, bits)}",
            ),
            (
                at + _align(SEGMENT.size + data_bytes) > size,
                f"its data runs past the end of the CONST section at byte {base + size}",
            ),
        )
        start = at + SEGMENT.size
        values = _unpack(data[start : start + data_bytes], length, bits, bool(signed), where)
        at += _align(SEGMENT.size + data_bytes)
        _check_padding(container.data, base + start + data_bytes, base + at)
        segments.append(Segment(dram, bits, bool(signed), values))
    if at != size:
        raise BinaryError(
            f"byte offset {base + at}: {size - at} bytes after the last constant segment"
        )
    return tuple(segments)


def _loads(payload: bytes, where: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError("an object repeats a key")
        return dict(items)

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number {text[:20]} is not finite")
        return value

    def refuse(text: str) -> float:
        raise ValueError(f"{text} is not a number")

    try:
        return json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=pairs,
            parse_float=finite,
            parse_constant=refuse,
        )
    except (ValueError, RecursionError) as error:
        raise BinaryError(f"{where} is not valid UTF-8 JSON: {error}") from None


def _machine(raw: Any, where: str) -> AccelConfig:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BinaryError(f"{where} must be a JSON object with a string field name")
    try:
        machine = AccelConfig.from_dict(raw, where)
    except (DopantError, TypeError, ValueError) as error:
        # AccelConfig.from_dict raises TypeError for some wrongly typed fields.
        raise BinaryError(f"{where} is not a valid accelerator config: {error}") from None
    for field in ("scratchpad_kib", "accumulator_kib"):
        if getattr(machine, field) > MAX_MEMORY_KIB:
            raise BinaryError(f"{where}: field {field} is over the {MAX_MEMORY_KIB} KiB limit")
    return machine


def _check_keys(value: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != set(keys):
        raise BinaryError(f"{where} must be a JSON object with exactly the keys {', '.join(keys)}")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BinaryError(f"{where} must be an integer in [{low}, {high}], got {_show(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BinaryError(f"{where} must be a JSON list, got {_show(value)}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise BinaryError(f"{where} must be a non-empty string, got {_show(value)}")
    return value


def _io_from_json(
    raw: Any, where: str
) -> tuple[int, tuple[TensorDesc, ...], tuple[TensorDesc, ...]]:
    io = _check_keys(raw, ("dram_bytes", "inputs", "outputs"), where)
    dram_bytes = _int(io["dram_bytes"], f"{where} field dram_bytes", 1, MAX_DRAM_BYTES)
    inputs, outputs = (
        tuple(
            _tensor(item, f"{where} field {key}[{index}]")
            for index, item in enumerate(_list(io[key], f"{where} field {key}"))
        )
        for key in ("inputs", "outputs")
    )
    return dram_bytes, inputs, outputs


def _tensor(raw: Any, where: str) -> TensorDesc:
    t = _check_keys(raw, TENSOR_KEYS, where)
    dims = _list(t["shape"], f"{where}.shape")
    if len(dims) > MAX_RANK:
        raise BinaryError(f"{where}.shape has {len(dims)} dimensions, over {MAX_RANK}")
    shape = tuple(_int(d, f"{where}.shape[{i}]", 1, MAX_ELEMENTS) for i, d in enumerate(dims))
    if math.prod(shape) > MAX_ELEMENTS:
        raise BinaryError(f"{where}.shape has over {MAX_ELEMENTS} elements")
    bits = _int(t["bits"], f"{where}.bits", 2, 32)
    if bits not in TENSOR_BITS:
        raise BinaryError(f"{where}.bits must be one of {TENSOR_BITS}, got {bits}")
    if not isinstance(t["signed"], bool):
        raise BinaryError(f"{where}.signed must be true or false, got {_show(t['signed'])}")
    scale = t["scale"]
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale > 0:
        raise BinaryError(f"{where}.scale must be a positive number, got {_show(scale)}")
    low, high = _value_range(bits, t["signed"])
    return TensorDesc(
        name=_name(t["name"], f"{where}.name"),
        shape=shape,
        dram=_int(t["dram"], f"{where}.dram", 0, MAX_DRAM_BYTES),
        bits=bits,
        signed=t["signed"],
        scale=float(scale),
        zero_point=_int(t["zero_point"], f"{where}.zero_point", low, high),
    )


def _layers_from_json(raw: Any, where: str) -> tuple[LayerRange, ...]:
    layers = []
    for index, item in enumerate(_list(raw, where)):
        entry = _check_keys(item, ("name", "start", "stop"), f"{where} entry {index}")
        layers.append(
            LayerRange(
                name=_name(entry["name"], f"{where} entry {index} field name"),
                start=_int(
                    entry["start"], f"{where} entry {index} field start", 0, MAX_INSTRUCTIONS
                ),
                stop=_int(entry["stop"], f"{where} entry {index} field stop", 0, MAX_INSTRUCTIONS),
            )
        )
    return tuple(layers)
