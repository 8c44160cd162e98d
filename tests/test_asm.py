"""Assembly text: round trips through `format_program`/`parse_assembly`, errors with file:line,
disassembly of a binary, and assembling new code into one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopant.backend.asm import (
    AsmError,
    assemble_into,
    disassemble,
    format_instruction,
    format_program,
    parse_assembly,
)
from dopant.backend.binary import BinaryError, read_program, write_program
from dopant.backend.image import LayerRange, Segment, TensorDesc
from dopant.backend.image import ProgramImage as Program
from dopant.backend.presets import preset
from dopant.compiler.cli.accel import main_asm, main_disasm
from dopant.dialects.isa import ISA, Instruction, InstructionDef


def instructions() -> st.SearchStrategy[Instruction]:
    """Any instruction of the table, every field anywhere in its range."""

    def of(definition: InstructionDef) -> st.SearchStrategy[Instruction]:
        fields = {f.name: st.integers(f.low, f.high) for f in definition.all_fields[1:]}
        return st.fixed_dictionaries(fields).map(
            lambda values: Instruction.make(definition.mnemonic, **values)
        )

    return st.one_of([of(d) for d in ISA])


def small_program(code: tuple[Instruction, ...]) -> Program:
    config = preset("edge16")
    return Program(
        config_hash=config.stable_hash(),
        config=config.to_dict(),
        instructions=code,
        segments=(Segment(0, 8, True, np.arange(-3, 3)),),
        inputs=(TensorDesc("x", (1, 4), 64, 8, True, 0.5, 0),),
        outputs=(TensorDesc("y", (2,), 80, 8, False, 0.25, 128),),
        layers=(LayerRange("stem.conv", 0, 2), LayerRange("head", 2, 3)),
        dram_bytes=128,
    )


CODE = (
    Instruction.make("load", dram=64, d=1, h=1, w=4, sw=1, bits=8, signed=1, signal=0b101),
    Instruction.make("vrequant", wait=0b1, out=8, count=4, lo=-128, hi=127),
    Instruction.make("store", wait=0b100, local=8, dram=80, d=1, h=1, w=2, sw=1, bits=8),
)


@settings(max_examples=100)
@given(st.lists(instructions(), max_size=8))
def test_random_programs_round_trip_through_text(code: list[Instruction]) -> None:
    text = format_program(code)
    assert parse_assembly(text) == code
    assert text.count("\n") == len(code)


def test_the_format_is_table_order_without_zeros_with_masks_in_binary() -> None:
    instruction = Instruction.make("vadd", wait=0b101, signal=2, a=7, count=3, lo=-5, hi=9)
    assert format_instruction(instruction) == "vadd wait=0b101 signal=0b10 a=7 count=3 lo=-5 hi=9"
    assert format_instruction(Instruction.make("store")) == "store"


def test_comments_blank_lines_and_any_base_are_accepted() -> None:
    text = """
    # a tile of x
    load  dram=0x40 d=1 h=1 w=4 sw=1 bits=8 signed=1 signal=0b101   # comment after code

    vrequant wait=1 out=8 count=4 lo=-128 hi=127
    store wait=0b100 local=8 dram=80 d=1 h=1 w=2 sw=1 bits=0o10
    """
    assert parse_assembly(text) == list(CODE)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("jump d=1", "prog.s:2: unknown mnemonic 'jump'; the ISA has load, conv, store,"),
        ("store x=1", "prog.s:2: 'store' has no field 'x'; its fields are wait, signal, local,"),
        ("store opcode=3", "prog.s:2: 'store' has no field 'opcode'"),
        ("store d=4096", "prog.s:2: field d=4096 is out of its 12-bit range [0, 4095]"),
        ("vadd lo=-40000", "prog.s:2: field lo=-40000 is out of its 16-bit range [-32768, 32767]"),
        ("store d=-1", "prog.s:2: field d=-1 is out of its 12-bit range [0, 4095]"),
        ("store d=1 h=2 d=3", "prog.s:2: field d is given twice"),
        ("store d", "prog.s:2: malformed token 'd'; write field=value"),
        ("store =3", "prog.s:2: malformed token '=3'; write field=value"),
        ("store d=", "prog.s:2: malformed token 'd='; write field=value"),
        ("store d=1.5", "prog.s:2: field d has malformed value '1.5'"),
        ("store d=0b2", "prog.s:2: field d has malformed value '0b2'"),
    ],
)
def test_errors_name_file_line_and_field(line: str, message: str) -> None:
    with pytest.raises(AsmError) as error:
        parse_assembly(f"store\n{line}  # second line\n", "prog.s")
    assert str(error.value).startswith(message)


def test_disassembly_has_a_header_and_the_debug_map_and_parses_back() -> None:
    data = write_program(small_program(CODE))
    text = disassemble(data)
    lines = text.splitlines()
    config_hash = preset("edge16").stable_hash().hex()
    assert lines[0] == f"# dopant binary for accelerator 'edge16', config hash {config_hash}"
    assert lines[1] == "# 3 instructions, 1 constant segments, 128 DRAM bytes"
    assert lines[2] == "# input x: shape [1, 4], int8 at DRAM 64, scale 0.5, zero point 0"
    assert lines[3] == "# output y: shape [2], uint8 at DRAM 80, scale 0.25, zero point 128"
    assert lines[4:] == [
        "# layer stem.conv: instructions [0, 2)",
        format_instruction(CODE[0]),
        format_instruction(CODE[1]),
        "# layer head: instructions [2, 3)",
        format_instruction(CODE[2]),
    ]
    assert parse_assembly(text) == list(CODE)


def test_assemble_into_replaces_only_the_code() -> None:
    program = small_program(CODE)
    edited = assemble_into(program, format_program(CODE[::-1]))
    assert edited.instructions == CODE[::-1]
    assert edited.layers == program.layers and edited.inputs == program.inputs


def test_assemble_into_refuses_code_too_short_for_the_debug_map() -> None:
    message = (
        "prog.s: the debug map's layer 'head' covers instructions [2, 3) but the assembly has 2"
    )
    with pytest.raises(AsmError, match=f"^{re.escape(message)}$"):
        assemble_into(small_program(CODE), format_program(CODE[:2]), "prog.s")


def test_the_command_line_functions_round_trip_through_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "net.dpb"
    binary.write_bytes(write_program(small_program(CODE)))
    main_disasm(binary, tmp_path / "net.s")
    main_disasm(binary, None)
    assert capsys.readouterr().out == (tmp_path / "net.s").read_text()

    edited = (tmp_path / "net.s").read_text().replace("count=4", "count=3")
    (tmp_path / "edited.s").write_text(edited)
    main_asm(tmp_path / "edited.s", tmp_path / "edited.dpb", binary)
    program = read_program((tmp_path / "edited.dpb").read_bytes())
    assert program.instructions[1]["count"] == 3
    assert program.instructions[0] == CODE[0]


def test_the_command_line_functions_name_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BinaryError, match=r"^binary file '.*nope.dpb' does not exist$"):
        main_disasm(tmp_path / "nope.dpb", None)
    binary = tmp_path / "net.dpb"
    binary.write_bytes(write_program(small_program(CODE)))
    with pytest.raises(AsmError, match=r"^assembly file '.*nope.s' does not exist$"):
        main_asm(tmp_path / "nope.s", tmp_path / "out.dpb", binary)
