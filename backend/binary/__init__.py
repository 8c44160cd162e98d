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
and DEBUG (JSON {"layers": [{"name", "start", "stop"}], "values": [tensor], "gemms": [{"name",
"m", "k", "n", "groups", "w_bits", "a_bits"}], "source"}: each layer's instruction range, where
each intermediate value is left in DRAM, each conv or linear layer's untiled GEMM, from which
statistics compute the standard fold model (since format version 3), and "sha256:" with the
digest of the quantized IR's text the program was compiled from, or "" (since version 4)).
JSON is UTF-8 with sorted keys and compact separators; floats are written by `repr`, so they
read back exactly.

`read_program` checks the container (layout, checksums, types, sizes); `runtime.loader` checks
what the program means for the machine. No xDSL here: the simulator side reads binaries.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

from dopant.backend.binary.debug import debug_payload, read_debug
from dopant.backend.binary.format import (
    ALIGN_BYTES,
    ENTRY,
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    MAX_FILE_BYTES,
    MAX_SECTION_BYTES,
    TRAILER_BYTES,
    BinaryError,
    Container,
    SectionKind,
    align,
    check_padding,
    refuse_first,
    show,
)
from dopant.backend.binary.sections import (
    code_payload,
    config_payload,
    const_payload,
    io_payload,
    read_code,
    read_io,
    read_json,
    read_machine,
    read_segments,
)
from dopant.backend.image import ProgramImage
from dopant.support.files import write_atomic

# ---- writing ------------------------------------------------------------------------------


def write_program(program: ProgramImage) -> bytes:
    """The `.dpb` bytes of `program`: the same ProgramImage always gives the same bytes.

    Refuses (BinaryError) what `read_program` would refuse: a config hash that is not the
    config's, instructions whose fields do not fit, constants outside their bit width, I/O or
    debug entries of the wrong type, sizes over the limits.
    """
    sections = (
        (SectionKind.CONFIG, config_payload(program)),
        (SectionKind.CODE, code_payload(program.instructions)),
        (SectionKind.CONST, const_payload(program.segments)),
        (SectionKind.IO, io_payload(program)),
        (SectionKind.DEBUG, debug_payload(program)),
    )
    table_end = HEADER.size + len(sections) * ENTRY.size
    entries, body = bytearray(), bytearray()
    for kind, payload in sections:
        if len(payload) > MAX_SECTION_BYTES:
            raise BinaryError(
                f"the {kind.name} section would be {len(payload)} bytes, over the "
                f"{MAX_SECTION_BYTES}-byte limit"
            )
        offset = align(table_end + len(body))
        body += bytes(offset - table_end - len(body)) + payload
        entries += ENTRY.pack(kind, 0, zlib.crc32(payload), offset, len(payload))
    body += bytes(align(table_end + len(body)) - table_end - len(body))
    total = table_end + len(body) + TRAILER_BYTES
    header = HEADER.pack(MAGIC, FORMAT_VERSION, len(sections), 0, program.config_hash, total, 0)
    content = header + entries + body
    return bytes(content) + hashlib.sha256(content).digest()


def save_program(program: ProgramImage, path: str | os.PathLike[str]) -> None:
    """Write `program` to `path` atomically (a failure leaves no half-written file)."""
    write_atomic(path, write_program(program))


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
            f"not a dopant binary: the magic at byte offset 0 is {show(data[:8])}, not {MAGIC!r}"
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
        refuse_first(
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
            (offset != align(previous_end), f"leaves a gap after byte {previous_end}"),
            (
                zlib.crc32(data[offset : offset + length]) != crc,
                "has a crc32 that does not match the section's bytes",
            ),
        )
        check_padding(data, previous_end, offset)
        sections[kind] = (offset, length)
        previous_end = offset + length
    missing = [kind.name for kind in SectionKind if kind not in sections]
    if missing:
        raise BinaryError(f"the section table at byte offset 64 lacks {', '.join(missing)}")
    if align(previous_end) != sections_end:
        raise BinaryError(
            f"byte offset {previous_end}: {sections_end - previous_end} bytes between the last "
            "section and the checksum belong to no section"
        )
    check_padding(data, previous_end, sections_end)
    return sections


# ---- reading the sections -----------------------------------------------------------------


def read_program(data: bytes) -> ProgramImage:
    """The ProgramImage in `data`; BinaryError (naming the byte offset or field) if malformed."""
    return decode_program(read_container(data))


def decode_program(container: Container) -> ProgramImage:
    """The ProgramImage in a checked container: every section parsed, typed and size-checked."""
    where = container.where(SectionKind.CONFIG)
    machine = read_machine(read_json(container.payload(SectionKind.CONFIG), where), where)
    if machine.stable_hash() != container.config_hash:
        raise BinaryError(
            f"the config hash at byte offset 16 is not the hash of the embedded config "
            f"'{machine.name}' in {where}"
        )
    where = container.where(SectionKind.IO)
    dram_bytes, inputs, outputs = read_io(
        read_json(container.payload(SectionKind.IO), where), where
    )
    where = container.where(SectionKind.DEBUG)
    layers, values, gemms, source = read_debug(
        read_json(container.payload(SectionKind.DEBUG), where), where
    )
    return ProgramImage(
        config_hash=container.config_hash,
        config=machine.to_dict(),
        instructions=read_code(container),
        segments=read_segments(container),
        inputs=inputs,
        outputs=outputs,
        layers=layers,
        dram_bytes=dram_bytes,
        values=values,
        gemms=gemms,
        source=source,
    )
