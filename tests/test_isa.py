"""The ISA table: its invariants, encode/decode round trips over every field's range, and the
errors of `decode` and `Instruction.make`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopant.dialects.isa import (
    BY_MNEMONIC,
    HEADER,
    INSTRUCTION_BYTES,
    ISA,
    Instruction,
    InstructionDef,
    IsaError,
    _check_table,
    decode,
    encode,
)


def instructions() -> st.SearchStrategy[Instruction]:
    """Any instruction of the table, every field anywhere in its range."""

    def of(definition: InstructionDef) -> st.SearchStrategy[Instruction]:
        fields = {f.name: st.integers(f.low, f.high) for f in definition.all_fields[1:]}
        return st.fixed_dictionaries(fields).map(
            lambda values: Instruction.make(definition.mnemonic, **values)
        )

    return st.one_of([of(d) for d in ISA])


def test_the_table_keeps_its_invariants() -> None:
    _check_table()
    assert [f.name for f in HEADER] == ["opcode", "wait", "signal"]


@settings(max_examples=300)
@given(instructions())
def test_decode_inverts_encode(instruction: Instruction) -> None:
    data = encode(instruction)
    assert len(data) == INSTRUCTION_BYTES
    assert decode(data) == instruction


@settings(max_examples=50)
@given(st.lists(instructions(), min_size=1, max_size=5), st.integers(0, 40))
def test_decode_reads_at_an_offset(code: list[Instruction], prefix: int) -> None:
    data = bytes(prefix) + b"".join(encode(i) for i in code)
    offsets = range(prefix, len(data), INSTRUCTION_BYTES)
    assert [decode(data, at) for at in offsets] == code


@pytest.mark.parametrize("definition", ISA, ids=lambda d: d.mnemonic)
def test_extreme_values_round_trip(definition: InstructionDef) -> None:
    for pick in (lambda f: f.low, lambda f: f.high):
        values = {f.name: pick(f) for f in definition.all_fields[1:]}
        instruction = Instruction.make(definition.mnemonic, **values)
        assert decode(encode(instruction)).fields() == {"opcode": definition.opcode, **values}


def test_signed_fields_hold_negative_values() -> None:
    instruction = Instruction.make("vrequant", lo=-32768, hi=-1)
    assert decode(encode(instruction))["lo"] == -32768
    assert decode(encode(instruction))["hi"] == -1


@pytest.mark.parametrize("opcode", [0, 8, 63])
def test_decode_refuses_unknown_opcodes_with_the_byte_offset(opcode: int) -> None:
    data = bytes(64) + opcode.to_bytes(INSTRUCTION_BYTES, "little")
    with pytest.raises(IsaError, match=f"^unknown opcode {opcode} at byte offset 64$"):
        decode(data, 64)


@pytest.mark.parametrize("definition", ISA, ids=lambda d: d.mnemonic)
def test_decode_refuses_reserved_bits_with_the_byte_offset(definition: InstructionDef) -> None:
    used_bits = sum(f.bits for f in definition.all_fields)
    if used_bits == INSTRUCTION_BYTES * 8:
        pytest.skip("no reserved bits")
    word = int.from_bytes(encode(Instruction.make(definition.mnemonic)), "little")
    data = bytes(32) + (word | 1 << used_bits).to_bytes(INSTRUCTION_BYTES, "little")
    message = f"reserved bits set in a '{definition.mnemonic}' instruction at byte offset 32"
    with pytest.raises(IsaError, match=f"^{message}$"):
        decode(data, 32)


def test_decode_refuses_a_truncated_instruction() -> None:
    data = encode(Instruction.make("store"))[:20]
    with pytest.raises(IsaError, match=r"^truncated instruction at byte offset 0: 20 of 32 bytes$"):
        decode(data)


def test_make_fills_unnamed_fields_with_zero_and_implies_the_opcode() -> None:
    instruction = Instruction.make("store", d=2)
    assert instruction["opcode"] == BY_MNEMONIC["store"].opcode
    assert instruction["h"] == 0
    assert instruction.engine == "store"
    with pytest.raises(KeyError, match="has no field nope"):
        instruction["nope"]


def test_make_refuses_an_unknown_instruction() -> None:
    with pytest.raises(IsaError, match=r"^unknown instruction 'jump'; the ISA has load, conv,"):
        Instruction.make("jump")


def test_make_refuses_unknown_fields_and_names_them() -> None:
    with pytest.raises(
        IsaError, match=r"^'store' has no field\(s\) bogus, x; its fields are wait,"
    ):
        Instruction.make("store", x=1, bogus=2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("wait", 1 << 16, "'vadd' field wait=65536 does not fit its 16 bits [0, 65535]"),
        ("count", -1, "'vadd' field count=-1 does not fit its 24 bits [0, 16777215]"),
        ("lo", -32769, "'vadd' field lo=-32769 does not fit its 16 bits [-32768, 32767]"),
        ("hi", 32768, "'vadd' field hi=32768 does not fit its 16 bits [-32768, 32767]"),
    ],
)
def test_make_refuses_values_out_of_range(field: str, value: int, message: str) -> None:
    with pytest.raises(IsaError) as error:
        Instruction.make("vadd", **{field: value})
    assert str(error.value) == message
