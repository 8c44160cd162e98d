"""The `.dpb` container and the loader: round trips, the layout as documented, refusal of every
kind of corruption (always a BinaryError naming a byte offset or field, never a crash or a
hang), and the loader's semantic checks with their exact messages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dopant.backend.binary import (
    BinaryError,
    SectionKind,
    read_binary_file,
    read_container,
    read_program,
    save_program,
    write_program,
)
from dopant.backend.image import LayerGemm, LayerRange, Segment, TensorDesc
from dopant.backend.image import ProgramImage as Program
from dopant.backend.presets import preset
from dopant.backend.target import AccelConfig
from dopant.dialects.isa import ISA, Instruction, InstructionDef
from dopant.runtime.loader import load

EDGE16 = preset("edge16")
CODE = (
    Instruction.make(
        "load", dram=64, d=1, h=4, w=4, sd=16, sh=4, sw=1, bits=8, signed=1, src_h=4, src_w=4,
        signal=0b1,
    ),
    Instruction.make(
        "load", dram=0, local=16, d=1, h=3, w=3, sd=9, sh=3, sw=1, bits=4, signed=1, src_h=3,
        src_w=3, signal=0b10,
    ),
    Instruction.make(
        "load", to_acc=1, dram=32, local=100, d=1, h=1, w=4, sw=1, bits=32, signed=1, src_h=1,
        src_w=4, signal=0b100,
    ),
    Instruction.make(
        "conv", wait=0b11, c_in=1, ih=4, iw=4, wgt=16, n=1, groups=1, kh=3, kw=3, stride_h=1,
        stride_w=1, dil_h=1, dil_w=1, oh=2, ow=2, w_bits=4, a_bits=8, signal=0b1000,
    ),
    Instruction.make(
        "store_acc", wait=0b1100, dram=96, d=1, h=2, w=2, sd=4, sh=2, sw=1, bits=8, signed=1,
        params=100, lo=-128, hi=127,
    ),
)  # fmt: skip
PROGRAM = Program(
    config_hash=EDGE16.stable_hash(),
    config=EDGE16.to_dict(),
    instructions=CODE,
    segments=(
        Segment(0, 4, True, np.array([-8, 7, 3, -1, 0, 5, -4, 2, 1])),
        Segment(16, 2, False, np.array([0, 1, 2, 3, 3, 2, 1])),
        Segment(32, 32, True, np.array([1 << 30, -1, -(1 << 31), (1 << 31) - 1])),
    ),
    inputs=(TensorDesc("x", (1, 1, 4, 4), 64, 8, True, 0.1, 0),),
    outputs=(TensorDesc("y", (1, 1, 2, 2), 96, 8, True, 1 / 3, -5),),
    layers=(LayerRange("stem.conv", 0, 4), LayerRange("stem.requant", 4, 5)),
    dram_bytes=128,
    # The conv's untiled GEMM: M = 2 * 2 outputs, K = 1 * 3 * 3, N = 1: 36 MACs, as it does.
    gemms=(LayerGemm("stem.conv", 4, 9, 1, 1, 4, 8),),
)
DATA = write_program(PROGRAM)
NAMES_A_PLACE = re.compile(r"byte offset \d+|field")


def assert_same(a: Program, b: Program) -> None:
    """Field by field, so a loaded `runtime.program.Program` compares with the image."""
    for x, y in zip(a.segments, b.segments, strict=True):
        assert x.values.dtype == y.values.dtype == np.int64
    for field in dataclasses.fields(Program):
        assert getattr(a, field.name) == getattr(b, field.name), field.name


def build_file(payloads: dict[SectionKind, bytes], config_hash: bytes) -> bytes:
    """The documented layout, written independently of `write_program`."""
    offset, entries, placed = 64 + 24 * len(payloads), b"", []
    for kind, payload in payloads.items():
        offset = -(-offset // 8) * 8
        entries += struct.pack("<HHIQQ", kind, 0, zlib.crc32(payload), offset, len(payload))
        placed.append((offset, payload))
        offset += len(payload)
    content = bytearray(-(-offset // 8) * 8)
    total = len(content) + 32
    content[:64] = struct.pack(
        "<8sHHI32sQQ", b"DOPANTPB", 4, len(payloads), 0, config_hash, total, 0
    )
    content[64 : 64 + len(entries)] = entries
    for at, payload in placed:
        content[at : at + len(payload)] = payload
    return bytes(content) + hashlib.sha256(content).digest()


def sections_of(data: bytes) -> dict[SectionKind, bytes]:
    container = read_container(data)
    return {kind: container.payload(kind) for kind in SectionKind}


def with_section(kind: SectionKind, payload: bytes, config_hash: bytes | None = None) -> bytes:
    return build_file({**sections_of(DATA), kind: payload}, config_hash or EDGE16.stable_hash())


def reseal(data: bytearray) -> bytes:
    """`data` with its checksum recomputed, so the checks behind it are reached."""
    data[-32:] = hashlib.sha256(data[:-32]).digest()
    return bytes(data)


def refused(data: bytes, match: str | None = None) -> str:
    with pytest.raises(BinaryError) as error:
        read_program(data)
    message = str(error.value)
    assert NAMES_A_PLACE.search(message), message
    if match is not None:
        assert re.search(match, message), message
    return message


def dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# ---- writing and reading back -------------------------------------------------------------


def test_a_program_round_trips_and_writes_the_same_bytes_every_time() -> None:
    assert_same(read_program(DATA), PROGRAM)
    assert write_program(PROGRAM) == DATA
    assert write_program(read_program(DATA)) == DATA


def test_the_bytes_follow_the_documented_layout() -> None:
    assert DATA[:8] == b"DOPANTPB" and DATA[16:48] == EDGE16.stable_hash()
    assert build_file(sections_of(DATA), EDGE16.stable_hash()) == DATA
    sections = sections_of(DATA)
    assert json.loads(sections[SectionKind.CONFIG]) == EDGE16.to_dict()
    assert json.loads(sections[SectionKind.IO])["outputs"][0]["scale"] == 1 / 3
    assert len(sections[SectionKind.CODE]) == 32 * len(CODE)


def test_constants_are_packed_lsb_first() -> None:
    const = sections_of(DATA)[SectionKind.CONST]
    assert struct.unpack_from("<IQBBHII", const) == (3, 0, 4, 1, 0, 9, 5)
    # 4-bit -8, 7, 3, -1, ... -> nibbles 8, 7, 3, 15, 0, 5, 12, 2, 1, low nibble first
    assert const[24:29] == bytes([0x78, 0xF3, 0x50, 0x2C, 0x01])
    # records are padded to 8 bytes: the next starts at 4 + 32; 2-bit 0, 1, 2, 3 | 3, 2, 1
    assert struct.unpack_from("<QBBHII", const, 36) == (16, 2, 0, 0, 7, 2)
    assert const[56:58] == bytes([0b11100100, 0b00011011])
    # and the int32 record at 36 + 24, its data 8-byte aligned at 80
    assert struct.unpack_from("<4i", const, 80) == (1 << 30, -1, -(1 << 31), (1 << 31) - 1)


def test_save_and_load_a_file(tmp_path: Path) -> None:
    path = tmp_path / "net.dpb"
    save_program(PROGRAM, path)
    assert read_binary_file(path) == DATA
    assert_same(load(path, EDGE16), PROGRAM)
    assert_same(load(str(path)), PROGRAM)
    with pytest.raises(BinaryError, match=r"^binary file '.*missing.dpb' does not exist$"):
        load(tmp_path / "missing.dpb")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config_hash": bytes(32)}, "field config_hash is not the hash of the program's config"),
        (
            {"segments": (Segment(0, 4, True, np.array([8])),)},
            "constant segment 0: field values holds numbers outside [-8, 7] of 4-bit signed data",
        ),
        (
            {"segments": (Segment(0, 32, False, np.array([8])),)},
            "constant segment 0: field signed must be true for 32-bit (int32) data",
        ),
        (
            {"instructions": (Instruction("store", (("opcode", 3), ("wait", 1 << 16))),)},
            "instruction 0 cannot be encoded: 'store' field wait=65536 does not fit its 16 bits",
        ),
        (
            {"inputs": (TensorDesc("x", (1,), 0, 8, True, float("nan"), 0),)},
            "the IO section cannot be written as JSON: Out of range float values",
        ),
        (
            {"inputs": (TensorDesc("x", (0,), 0, 8, True, 1.0, 0),)},
            r"the IO section field inputs[0].shape[0] must be an integer in [1, 268435456], got 0",
        ),
    ],
)
def test_write_refuses_what_read_would_refuse(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BinaryError) as error:
        write_program(dataclasses.replace(PROGRAM, **change))
    assert str(error.value).startswith(message)


# ---- corruption ---------------------------------------------------------------------------


def test_every_truncation_is_refused() -> None:
    for length in range(len(DATA)):
        refused(DATA[:length], "truncated|file size at byte offset 48")


@settings(max_examples=200)
@given(st.lists(st.integers(0, len(DATA) * 8 - 1), min_size=1, max_size=4, unique=True))
def test_bit_flips_are_refused(bits: list[int]) -> None:
    data = bytearray(DATA)
    for bit in bits:
        data[bit // 8] ^= 1 << (bit % 8)
    refused(bytes(data))


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_overwrites_behind_a_valid_checksum_are_refused_or_harmless(data: st.DataObject) -> None:
    payloads = sections_of(DATA)
    kind = data.draw(st.sampled_from(list(SectionKind)))
    payload = bytearray(payloads[kind])
    at = data.draw(st.integers(0, len(payload) - 1))
    patch = data.draw(st.binary(min_size=1, max_size=8))
    payload[at : at + len(patch)] = patch
    corrupt = build_file({**payloads, kind: bytes(payload)}, EDGE16.stable_hash())
    try:
        load(corrupt)
    except BinaryError as error:
        assert NAMES_A_PLACE.search(str(error)), str(error)


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.text(max_size=5)
    leaves |= st.floats(allow_nan=False, allow_infinity=False)
    return st.recursive(
        leaves,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=6,
    )


def mutate(value: Any, data: st.DataObject) -> Any:
    """`value` with one randomly chosen part replaced by a random JSON value."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        return {**value, key: mutate(value[key], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(value) - 1))
        return [*value[:index], mutate(value[index], data), *value[index + 1 :]]
    return data.draw(json_values())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_json_sections_with_wrong_values_are_refused_or_harmless(data: st.DataObject) -> None:
    payloads = sections_of(DATA)
    kind = data.draw(st.sampled_from([SectionKind.CONFIG, SectionKind.IO, SectionKind.DEBUG]))
    value = mutate(json.loads(payloads[kind]), data)
    corrupt = build_file({**payloads, kind: dumps(value)}, EDGE16.stable_hash())
    try:
        load(corrupt)
    except BinaryError as error:
        assert NAMES_A_PLACE.search(str(error)), str(error)


@settings(max_examples=100)
@given(st.integers(0, 4), st.sampled_from([0, 4, 8, 12, 16]), st.integers(0, (1 << 64) - 1))
def test_bad_section_table_entries_are_refused(entry: int, field: int, value: int) -> None:
    data = bytearray(DATA)
    at = 64 + 24 * entry + field
    width = 2 if field < 4 else 4 if field == 4 else 8
    value %= 1 << (8 * width)
    if value == int.from_bytes(data[at : at + width], "little"):
        return
    data[at : at + width] = value.to_bytes(width, "little")
    refused(reseal(data), "section table entry|section table at byte offset 64")


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=20)
def test_a_config_hash_that_is_not_the_configs_is_refused(config_hash: bytes) -> None:
    data = bytearray(DATA)
    data[16:48] = config_hash
    if config_hash != EDGE16.stable_hash():
        refused(reseal(data), "^the config hash at byte offset 16 is not the hash of the embedded")


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused(noise: bytes) -> None:
    refused(noise)
    refused(b"DOPANTPB" + noise)


def test_duplicate_and_missing_sections_are_refused() -> None:
    payloads = sections_of(DATA)
    hash_ = EDGE16.stable_hash()
    doubled = build_file(payloads, hash_)[:-32]
    data = bytearray(doubled + bytes(32))
    data[64 + 24 + 0 : 64 + 24 + 2] = struct.pack("<H", SectionKind.CONFIG)
    refused(
        reseal(data), r"^section table entry 1 \(byte offset 88\) for the CONFIG section: repeats"
    )
    missing = {k: v for k, v in payloads.items() if k != SectionKind.DEBUG}
    refused(build_file(missing, hash_), "^the section table at byte offset 64 lacks DEBUG$")


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        (SectionKind.CODE, bytes(33), "^the CODE section .* is 33 bytes, not a multiple of the 32"),
        (SectionKind.CODE, bytes(32), r"^instruction 0: unknown opcode 0 at byte offset \d+$"),
        (SectionKind.CONST, b"\xff\xff\xff\xff", "the segment count 4294967295 at byte offset"),
        (SectionKind.CONST, struct.pack("<IQBBHII", 1, 0, 3, 0, 0, 1, 1) + bytes(3), "bits=3 is not"),
        (SectionKind.CONST, struct.pack("<IQBBHII", 1, 0, 8, 0, 0, 1, 1), "data runs past the end"),
        (SectionKind.CONST, struct.pack("<IQBBHII", 1, 0, 4, 1, 0, 1, 1) + b"\xf0" + bytes(3), "unused bits"),
        (SectionKind.CONST, struct.pack("<IQBBHII", 1, 0, 8, 0, 0, 2, 1) + bytes(4), "data bytes=1, but 2"),
        (SectionKind.CONST, struct.pack("<IQBBHII", 1, 0, 8, 0, 0, 1 << 28 | 1, 1 << 28 | 1), "count=268435457 takes"),
        (SectionKind.IO, b"\xff", "is not valid UTF-8 JSON"),
        (SectionKind.IO, b'{"dram_bytes":NaN,"inputs":[],"outputs":[]}', "NaN is not a number"),
        (SectionKind.IO, b'{"dram_bytes":1,"dram_bytes":1,"inputs":[],"outputs":[]}', "repeats a key"),
        (SectionKind.IO, b"[" * 100_000, "is not valid UTF-8 JSON"),
        (SectionKind.IO, dumps({"dram_bytes": 1 << 40, "inputs": [], "outputs": []}), "field dram_bytes must be an integer in"),
        (SectionKind.IO, dumps({"dram_bytes": 1, "inputs": [{"name": "x", "shape": [1 << 20, 1 << 20], "dram": 0, "bits": 8, "signed": True, "scale": 1.0, "zero_point": 0}], "outputs": []}), "has over 268435456 elements"),
        (SectionKind.IO, dumps({"dram_bytes": 1, "inputs": [], "outputs": [], "x": 1}), "exactly the keys"),
        (SectionKind.DEBUG, dumps({"layers": [{"name": "a", "start": 1 << 40, "stop": 0}], "values": [], "gemms": [], "source": ""}), "field layers entry 0 field start must be"),
        (SectionKind.DEBUG, b'{"layers":[{"name":"a","start":1e999,"stop":0}],"values":[],"gemms":[],"source":""}', "is not finite"),
        (SectionKind.DEBUG, dumps([{"name": "a", "start": 0, "stop": 0}]), "must be a JSON object with exactly the keys layers, values, gemms, source"),
        (SectionKind.DEBUG, dumps({"layers": [], "values": [], "gemms": [], "source": ""} | {"x": 1}), "must be a JSON object with exactly the keys layers, values, gemms, source"),
        (SectionKind.DEBUG, dumps({"layers": [], "values": [{"name": "v", "shape": [2], "dram": 0, "bits": 16, "signed": True, "scale": 1.0, "zero_point": 0}], "gemms": [], "source": ""}), r"field values\[0\].bits must be one of"),
        (SectionKind.DEBUG, dumps({"layers": [], "values": [], "source": "", "gemms": [{"name": "c", "m": 0, "k": 9, "n": 1, "groups": 1, "w_bits": 8, "a_bits": 8}]}), r"^the DEBUG section \(byte offset \d+\) field gemms entry 0 field m must be an integer in \[1, 268435456\], got 0$"),
        (SectionKind.DEBUG, dumps({"layers": [], "values": [], "source": "", "gemms": [{"name": "", "m": 4, "k": 9, "n": 1, "groups": 1, "w_bits": 8, "a_bits": 8}]}), "field gemms entry 0 field name must be a non-empty string"),
        (SectionKind.DEBUG, dumps({"layers": [], "values": [], "source": "", "gemms": [{"name": "c", "m": 4, "k": 9, "n": 1, "groups": True, "w_bits": 8, "a_bits": 8}]}), "field gemms entry 0 field groups must be an integer in"),
        (SectionKind.DEBUG, dumps({"layers": [], "values": [], "source": "", "gemms": [{"name": "c", "m": 4, "k": 9, "n": 1, "w_bits": 8, "a_bits": 8}]}), "field gemms entry 0 must be a JSON object with exactly the keys name, m, k, n, groups, w_bits, a_bits"),
        (SectionKind.DEBUG, dumps({"layers": [], "values": [], "gemms": {}, "source": ""}), "field gemms must be a JSON list"),
        (SectionKind.DEBUG, dumps({"layers": [], "values": [], "gemms": [], "source": "md5:00"}), "field source must be 'sha256:' and 64 hex digits or empty, got 'md5:00'"),
    ],
)  # fmt: skip
def test_malformed_sections_are_refused(kind: SectionKind, payload: bytes, message: str) -> None:
    tracemalloc.start()
    try:
        refused(with_section(kind, payload), message)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 16 << 20  # absurd sizes are refused before anything is allocated


def test_an_absurd_section_size_is_refused_before_reading_it() -> None:
    data = bytearray(DATA)
    struct.pack_into("<Q", data, 64 + 24 * 2 + 16, 1 << 40)
    refused(reseal(data), r"^section table entry 2 .* gives 1099511627776 bytes, over 1073741824$")


def test_an_absurd_machine_is_refused() -> None:
    huge = EDGE16.with_changes(scratchpad_kib=1 << 30)
    payload = dumps(huge.to_dict())
    message = "field scratchpad_kib is over the 1048576 KiB limit"
    refused(with_section(SectionKind.CONFIG, payload, huge.stable_hash()), message)


# ---- the loader's semantic checks ---------------------------------------------------------


def load_with(**change: Any) -> None:
    load(write_program(dataclasses.replace(PROGRAM, **change)))


CODE_OFFSET = read_container(DATA).sections[SectionKind.CODE][0]
AT = f"instruction 5 (%s at byte offset {CODE_OFFSET + 5 * 32})"
CONV = dict(c_in=16, ih=3, iw=3, n=16, groups=1, kh=3, kw=3, stride_h=1, stride_w=1, dil_h=1, dil_w=1, oh=1, ow=1, w_bits=8, a_bits=8)  # fmt: skip
POOL = dict(c=1, ih=4, iw=4, oh=2, ow=2, kh=2, kw=2, stride_h=2, stride_w=2, bits=8)


@pytest.mark.parametrize(
    ("instruction", "message"),
    [
        (Instruction.make("load", local=262140, d=1, h=1, w=8, bits=8), "field local=262140 with 8 elements runs past the 262144-byte scratchpad"),
        (Instruction.make("load", d=1, h=1, w=1, bits=3), "field bits=3 is not a scratchpad width (2, 4, 8)"),
        (Instruction.make("load", to_acc=1, d=1, h=1, w=1, bits=8, signed=1), "field bits=8 (signed=1) must be 32 and signed: the accumulator holds int32"),
        (Instruction.make("load", to_acc=1, dram=2, d=1, h=1, w=1, bits=32, signed=1, src_h=1, src_w=1), "field dram=2 is not 4-byte aligned for int32 elements"),
        (Instruction.make("load", dram=120, d=2, h=1, w=1, sd=8, bits=8, src_h=1, src_w=1), "field dram=120 with strides sd=8, sh=0, sw=0 reaches byte 129, past the program's 128-byte DRAM"),
        (Instruction.make("store", d=0, h=1, w=1, bits=8), "field d=0 must be at least 1"),
        (Instruction.make("conv", **{**CONV, "groups": 3}), "field groups=3 does not divide c_in=16"),
        (Instruction.make("conv", **{**CONV, "ih": 2}), "field ih=2 is less than the 3 that oh, kh, stride_h and dil_h read"),
        (Instruction.make("conv", **{**CONV, "w_bits": 3}), "field w_bits=3 is not supported by 'edge16' (2, 4, 8)"),
        (Instruction.make("conv", **{**CONV, "acc": 16383}), "field acc=16383 with 16 words runs past the 16384-word accumulator"),
        (Instruction.make("store_acc", d=1, h=1, w=1, bits=4, signed=1, lo=-8, hi=8), "fields lo=-8, hi=8 must satisfy -8 <= lo <= hi <= 7"),
        (Instruction.make("vadd", count=1, params=16381), "field params=16381 with 4 words runs past the 16384-word accumulator"),
        (Instruction.make("vpool", **{**POOL, "ow": 3}), "field ow=3 is not the 2 that torch's output-size rule gives for iw, kw, stride_w, padding and ceil_mode"),
        (Instruction.make("vpool", **{**POOL, "pad_top": 2}), "field pad_top=2 is over half of kh=2"),
        (Instruction.make("vpool", **{**POOL, "avg": 1, "zero_pad": 1}), "field zero_pad=1 applies to max pooling only, but avg=1"),
        (Instruction.make("vrequant", wait=0b10000, count=1), "field wait=0b10000 never clears: token(s) 4 are not signalled enough, so the program deadlocks"),
    ],
)  # fmt: skip
def test_the_loader_names_instruction_offset_and_field(
    instruction: Instruction, message: str
) -> None:
    with pytest.raises(BinaryError) as error:
        load_with(instructions=(*CODE, instruction))
    assert str(error.value) == f"{AT % instruction.op}: {message}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"segments": (Segment(0, 8, True, np.arange(10)), Segment(8, 8, True, np.arange(2)))}, "constant segment 1: field dram=8 puts DRAM bytes [8, 10) on top of constant segment 0 at [0, 10)"),
        ({"segments": (Segment(2, 32, True, np.arange(2)),)}, "constant segment 0: field dram=2 is not 4-byte aligned for int32 data"),
        ({"outputs": (TensorDesc("y", (1, 40), 96, 8, True, 1.0, 0),)}, "output 'y': DRAM bytes [96, 136) run past field dram_bytes=128"),
        ({"inputs": (TensorDesc("x", (2,), 4, 8, True, 1.0, 0),)}, "input 'x': field dram=4 puts DRAM bytes [4, 6) on top of constant segment 0 at [0, 9)"),
        ({"layers": (LayerRange("a", 0, 6),)}, "debug map entry 'a': fields start=0, stop=6 are not a range of the 5 instructions"),
        ({"layers": (LayerRange("a", 0, 3), LayerRange("b", 2, 4))}, "debug map entry 'b': field start=2 overlaps 'a', which stops at 3"),
        ({"values": (TensorDesc("v", (1, 40), 96, 8, True, 1.0, 0),)}, "debug value 'v': DRAM bytes [96, 136) run past field dram_bytes=128"),
        ({"values": (TensorDesc("v", (1,), 16, 32, True, 1.0, 0),) * 2}, "the debug map's values repeats a tensor name: v"),
        ({"gemms": ()}, "debug map layer 'stem.conv': its GEMMs (fields groups * m * k * n) give 0 MACs but its conv instructions do 36; the GEMMs must describe its convs"),
        ({"gemms": (LayerGemm("stem.conv", 4, 9, 2, 1, 4, 8),)}, "debug map layer 'stem.conv': its GEMMs (fields groups * m * k * n) give 72 MACs but its conv instructions do 36; the GEMMs must describe its convs"),
        ({"gemms": (*PROGRAM.gemms, LayerGemm("head", 1, 1, 1, 1, 8, 8))}, "debug map layer 'head': its GEMMs (fields groups * m * k * n) give 1 MACs but its conv instructions do 0; the GEMMs must describe its convs"),
        ({"gemms": (LayerGemm("stem.conv", 4, 9, 1, 1, 8, 8),)}, "debug map layer 'stem.conv': instruction 3 (conv) fields w_bits=4, a_bits=8 are the widths of none of its GEMMs"),
        ({"gemms": (LayerGemm("stem.conv", 4, 9, 1, 1, 3, 8),)}, "debug map GEMM 'stem.conv': field w_bits=3 is not supported by 'edge16' (2, 4, 8)"),
    ],
)  # fmt: skip
def test_the_loader_checks_dram_and_the_debug_map(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BinaryError) as error:
        load_with(**change)
    assert str(error.value) == message


def test_debug_values_may_share_an_outputs_bytes_and_read_back_after_the_run() -> None:
    # The network's output is also its last layer's value: the loader accepts the overlap.
    value = TensorDesc("stem.requant", (1, 1, 2, 2), 96, 8, True, 1 / 3, -5)
    program = load(write_program(dataclasses.replace(PROGRAM, values=(value,))))
    x = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    result = program.run(x, values=True)
    assert list(result.values) == ["stem.requant"]
    assert np.array_equal(result.values["stem.requant"], result.raw_outputs[0])
    assert program.run(x).values == {}  # read back only when asked for


def test_the_loader_refuses_a_binary_for_another_machine() -> None:
    small8 = preset("small8")
    message = (
        f"the binary was compiled for accelerator 'edge16' (config hash "
        f"{EDGE16.stable_hash().hex()[:16]}) but the target is 'small8' (config hash "
        f"{small8.stable_hash().hex()[:16]}); recompile it for 'small8'"
    )
    with pytest.raises(BinaryError) as error:
        load(DATA, small8)
    assert str(error.value) == message
    assert_same(load(DATA, AccelConfig.from_dict({**EDGE16.to_dict(), "name": "mine"})), PROGRAM)


def instructions() -> st.SearchStrategy[Instruction]:
    """Any instruction of the table, every field anywhere in its range."""

    def of(definition: InstructionDef) -> st.SearchStrategy[Instruction]:
        fields = {f.name: st.integers(f.low, f.high) for f in definition.all_fields[1:]}
        return st.fixed_dictionaries(fields).map(
            lambda values: Instruction.make(definition.mnemonic, **values)
        )

    return st.one_of([of(d) for d in ISA])


@settings(max_examples=300)
@given(st.lists(instructions(), min_size=1, max_size=3))
def test_random_instructions_are_loaded_or_refused_by_index_and_field(
    code: list[Instruction],
) -> None:
    try:
        load_with(instructions=(*CODE, *code))
    except BinaryError as error:
        assert re.match(r"instruction \d+ \(\w+ at byte offset \d+\): fields? ", str(error))
