"""The payloads of the `.dpb` sections: CONFIG, CODE, CONST and IO to bytes and back (DEBUG is
`debug.py`; the layout is described in binary.py). Every reader checks types and sizes before it
allocates, and raises BinaryError naming the section, byte offset or field."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from dopant.backend.binary.format import (
    CONST_BITS,
    COUNT,
    MAX_DRAM_BYTES,
    MAX_ELEMENTS,
    MAX_MEMORY_KIB,
    MAX_RANK,
    SEGMENT,
    TENSOR_BITS,
    TENSOR_KEYS,
    BinaryError,
    Container,
    SectionKind,
    align,
    check_padding,
    refuse_first,
    show,
)
from dopant.backend.image import ProgramImage, Segment, TensorDesc, storage_range
from dopant.backend.target import AccelConfig
from dopant.dialects.isa import INSTRUCTION_BYTES, Instruction, IsaError, decode, encode
from dopant.support.errors import DopantError


def dumps_json(value: object, what: str) -> bytes:
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


def config_payload(program: ProgramImage) -> bytes:
    if len(program.config_hash) != 32:
        raise BinaryError(
            f"field config_hash is {len(program.config_hash)} bytes; it must be the 32-byte "
            "AccelConfig.stable_hash()"
        )
    payload = dumps_json(program.config, "CONFIG")
    machine = read_machine(read_json(payload, "the CONFIG section"), "the CONFIG section")
    if machine.stable_hash() != program.config_hash:
        raise BinaryError(
            f"field config_hash is not the hash of the program's config '{machine.name}'"
        )
    return payload


def code_payload(instructions: tuple[Instruction, ...]) -> bytes:
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


def const_payload(segments: tuple[Segment, ...]) -> bytes:
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
        low, high = storage_range(segment.bits, segment.signed)
        if len(values) and (values.min() < low or values.max() > high):
            raise BinaryError(
                f"{where}: field values holds numbers outside [{low}, {high}] of "
                f"{segment.bits}-bit {'signed' if segment.signed else 'unsigned'} data"
            )
        data = _pack(values.astype(np.int64), segment.bits)
        header = SEGMENT.pack(segment.dram, segment.bits, segment.signed, 0, len(values), len(data))
        record = header + data
        out += record + bytes(align(len(record)) - len(record))
    return bytes(out)


def tensor_json(desc: TensorDesc) -> dict[str, object]:
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


def io_payload(program: ProgramImage) -> bytes:
    io = {
        "dram_bytes": program.dram_bytes,
        "inputs": [tensor_json(t) for t in program.inputs],
        "outputs": [tensor_json(t) for t in program.outputs],
    }
    payload = dumps_json(io, "IO")
    read_io(read_json(payload, "the IO section"), "the IO section")  # refuse what reads fail
    return payload


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


def read_code(container: Container) -> tuple[Instruction, ...]:
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


def read_segments(container: Container) -> tuple[Segment, ...]:
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
        refuse_first(
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
                at + align(SEGMENT.size + data_bytes) > size,
                f"its data runs past the end of the CONST section at byte {base + size}",
            ),
        )
        start = at + SEGMENT.size
        values = _unpack(data[start : start + data_bytes], length, bits, bool(signed), where)
        at += align(SEGMENT.size + data_bytes)
        check_padding(container.data, base + start + data_bytes, base + at)
        segments.append(Segment(dram, bits, bool(signed), values))
    if at != size:
        raise BinaryError(
            f"byte offset {base + at}: {size - at} bytes after the last constant segment"
        )
    return tuple(segments)


def read_json(payload: bytes, where: str) -> Any:
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


def read_machine(raw: Any, where: str) -> AccelConfig:
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


def check_keys(value: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != set(keys):
        raise BinaryError(f"{where} must be a JSON object with exactly the keys {', '.join(keys)}")
    return value


def json_int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BinaryError(f"{where} must be an integer in [{low}, {high}], got {show(value)}")
    return value


def json_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BinaryError(f"{where} must be a JSON list, got {show(value)}")
    return value


def json_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise BinaryError(f"{where} must be a non-empty string, got {show(value)}")
    return value


def read_io(raw: Any, where: str) -> tuple[int, tuple[TensorDesc, ...], tuple[TensorDesc, ...]]:
    io = check_keys(raw, ("dram_bytes", "inputs", "outputs"), where)
    dram_bytes = json_int(io["dram_bytes"], f"{where} field dram_bytes", 1, MAX_DRAM_BYTES)
    inputs, outputs = (
        tuple(
            read_tensor(item, f"{where} field {key}[{index}]")
            for index, item in enumerate(json_list(io[key], f"{where} field {key}"))
        )
        for key in ("inputs", "outputs")
    )
    return dram_bytes, inputs, outputs


def read_tensor(raw: Any, where: str) -> TensorDesc:
    t = check_keys(raw, TENSOR_KEYS, where)
    dims = json_list(t["shape"], f"{where}.shape")
    if len(dims) > MAX_RANK:
        raise BinaryError(f"{where}.shape has {len(dims)} dimensions, over {MAX_RANK}")
    shape = tuple(json_int(d, f"{where}.shape[{i}]", 1, MAX_ELEMENTS) for i, d in enumerate(dims))
    if math.prod(shape) > MAX_ELEMENTS:
        raise BinaryError(f"{where}.shape has over {MAX_ELEMENTS} elements")
    bits = json_int(t["bits"], f"{where}.bits", 2, 32)
    if bits not in TENSOR_BITS:
        raise BinaryError(f"{where}.bits must be one of {TENSOR_BITS}, got {bits}")
    if not isinstance(t["signed"], bool):
        raise BinaryError(f"{where}.signed must be true or false, got {show(t['signed'])}")
    scale = t["scale"]
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale > 0:
        raise BinaryError(f"{where}.scale must be a positive number, got {show(scale)}")
    low, high = storage_range(bits, t["signed"])
    return TensorDesc(
        name=json_name(t["name"], f"{where}.name"),
        shape=shape,
        dram=json_int(t["dram"], f"{where}.dram", 0, MAX_DRAM_BYTES),
        bits=bits,
        signed=t["signed"],
        scale=float(scale),
        zero_point=json_int(t["zero_point"], f"{where}.zero_point", low, high),
    )
