"""Textual assembly for the accelerator: one instruction per line, round-tripping exactly.

    load dram=4096 d=16 h=8 w=8 sd=64 sh=8 sw=1 bits=8 signed=1 signal=0b1
    conv wait=0b1 c_in=16 ih=8 iw=8 n=16 groups=1 kh=1 kw=1 ...   # a comment

A line is a mnemonic then `field=value` tokens, fields in ISA table order, zero-valued fields
left out (they default to 0), `wait` and `signal` written in binary. Values are integers in any
Python base (`12`, `-3`, `0x1f`, `0b101`). `parse_assembly(format_program(code)) == code`.
No xDSL here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from dopant.backend.binary import BinaryError, read_program
from dopant.backend.image import ProgramImage
from dopant.dialects.isa import BY_MNEMONIC, Instruction

BINARY_FIELDS = ("wait", "signal")  # token masks read best bit by bit


class AsmError(BinaryError):
    """Assembly text that does not parse; the message starts with file:line and names the field."""


def format_instruction(instruction: Instruction) -> str:
    """`mnemonic field=value ...`: fields in table order, zeros left out, masks in binary."""
    parts = [instruction.op]
    for field in instruction.definition.all_fields[1:]:
        value = instruction[field.name]
        if value:
            text = f"{value:#b}" if field.name in BINARY_FIELDS else str(value)
            parts.append(f"{field.name}={text}")
    return " ".join(parts)


def format_program(instructions: Iterable[Instruction]) -> str:
    """One line per instruction, each ending in a newline."""
    return "".join(format_instruction(i) + "\n" for i in instructions)


def parse_assembly(text: str, filename: str = "<asm>") -> list[Instruction]:
    """The instructions in `text`; `#` starts a comment, blank lines are skipped.

    Raises AsmError naming file:line and the field for an unknown mnemonic or field, a value out
    of its field's range, a field given twice, or a token that is not `field=value`.
    """
    instructions = []
    for number, line in enumerate(text.split("\n"), 1):
        tokens = line.split("#", 1)[0].split()
        if tokens:
            instructions.append(_parse_line(tokens, f"{filename}:{number}"))
    return instructions


def _parse_line(tokens: list[str], where: str) -> Instruction:
    mnemonic, *assignments = tokens
    definition = BY_MNEMONIC.get(mnemonic)
    if definition is None:
        raise AsmError(
            f"{where}: unknown mnemonic '{mnemonic}'; the ISA has {', '.join(BY_MNEMONIC)}"
        )
    fields = {f.name: f for f in definition.all_fields[1:]}  # the opcode comes from the mnemonic
    values: dict[str, int] = {}
    for token in assignments:
        name, equals, text = token.partition("=")
        if not (name and equals and text):
            raise AsmError(f"{where}: malformed token '{token}'; write field=value")
        field = fields.get(name)
        if field is None:
            raise AsmError(
                f"{where}: '{mnemonic}' has no field '{name}'; its fields are {', '.join(fields)}"
            )
        if name in values:
            raise AsmError(f"{where}: field {name} is given twice")
        try:
            value = int(text, 0)
        except ValueError:
            raise AsmError(f"{where}: field {name} has malformed value '{text}'") from None
        if not field.low <= value <= field.high:
            raise AsmError(
                f"{where}: field {name}={value} is out of its {field.bits}-bit range "
                f"[{field.low}, {field.high}]"
            )
        values[name] = value
    return Instruction.make(mnemonic, **values)


def disassemble(program_bytes: bytes) -> str:
    """The program's code as assembly, after a header comment naming the machine and I/O, with
    each debug-map range announced by a comment where it starts."""
    program = read_program(program_bytes)
    lines = [
        f"# dopant binary for accelerator '{program.config['name']}', config hash "
        f"{program.config_hash.hex()}",
        f"# {len(program.instructions)} instructions, {len(program.segments)} constant "
        f"segments, {program.dram_bytes} DRAM bytes",
    ]
    for kind, tensors in (("input", program.inputs), ("output", program.outputs)):
        lines += [
            f"# {kind} {t.name}: shape {list(t.shape)}, {'' if t.signed else 'u'}int{t.bits} "
            f"at DRAM {t.dram}, scale {t.scale!r}, zero point {t.zero_point}"
            for t in tensors
        ]
    starts: dict[int, list[str]] = {}
    for layer in program.layers:
        starts.setdefault(min(layer.start, len(program.instructions)), []).append(
            f"# layer {layer.name}: instructions [{layer.start}, {layer.stop})"
        )
    for index, instruction in enumerate(program.instructions):
        lines += starts.pop(index, [])
        lines.append(format_instruction(instruction))
    lines += starts.pop(len(program.instructions), [])
    return "\n".join(lines) + "\n"


def assemble_into(program: ProgramImage, text: str, filename: str = "<asm>") -> ProgramImage:
    """`program` with its code replaced by the assembly `text`; everything else is kept.

    Raises AsmError if the text does not parse, or if a debug-map range of `program` no longer
    fits in the new code (keep the instruction count when editing a compiled program).
    """
    instructions = tuple(parse_assembly(text, filename))
    for layer in program.layers:
        if layer.stop > len(instructions):
            raise AsmError(
                f"{filename}: the debug map's layer '{layer.name}' covers instructions "
                f"[{layer.start}, {layer.stop}) but the assembly has {len(instructions)}"
            )
    return dataclasses.replace(program, instructions=instructions)
