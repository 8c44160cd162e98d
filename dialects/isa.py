"""The instruction set, defined once as data: `ISA` lists every instruction and its fields; the
encoder, decoder and assembler are generated from it.

Every instruction is 32 bytes: its fields packed little-endian, least significant bit first,
in table order, starting with the common header (opcode, wait, signal). Instructions are coarse
(a whole tile block each, like Gemmini's loop instructions) and go to one of four engines that
run decoupled (VTA): load, compute, vector and store. They order themselves with 16 counting
tokens: an instruction first takes one count from every token in `wait` (blocking until each is
positive), and adds one to every token in `signal` when it completes.

Memories: DRAM (byte addressed), the scratchpad `sp` (one element per byte) and the
accumulator `acc` (one int32 per word). Addresses in `sp`/`acc` count elements/words. Tokens
start at 0. The scratchpad holds values; their width and sign are set by the load that fills
it and the store that empties it. Every integer operand has zero point 0 (the quantize pass
guarantees it), so no instruction carries one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dopant.support.errors import DopantError

INSTRUCTION_BYTES = 32
TOKENS = 16
ENGINES = ("load", "compute", "vector", "store")


class IsaError(DopantError):
    """An instruction that cannot be encoded, decoded or assembled; names the field."""


@dataclass(frozen=True)
class Field:
    """One bit field: its name, width, whether it is two's complement, and what it means."""

    name: str
    bits: int
    doc: str
    signed: bool = False

    @property
    def low(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def high(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


@dataclass(frozen=True)
class InstructionDef:
    """One instruction: mnemonic, opcode, the engine that runs it, and its fields."""

    mnemonic: str
    opcode: int
    engine: str
    doc: str
    fields: tuple[Field, ...]

    @property
    def all_fields(self) -> tuple[Field, ...]:
        return HEADER + self.fields


HEADER = (
    Field("opcode", 6, "instruction kind"),
    Field("wait", TOKENS, "tokens to take one count from before starting (bit mask)"),
    Field("signal", TOKENS, "tokens to add one count to on completion (bit mask)"),
)

_BLOCK = (
    Field("d", 12, "block depth (channels)"),
    Field("h", 12, "block height"),
    Field("w", 12, "block width"),
)
_DRAM_STRIDES = (
    Field("sd", 24, "DRAM stride between depth slices, in elements"),
    Field("sh", 24, "DRAM stride between rows, in elements"),
    Field("sw", 12, "DRAM stride between columns, in elements"),
)
_ELEMENT = (
    Field("bits", 6, "element width in bits (2, 4, 8; 32 for int32 words)"),
    Field("signed", 1, "1: two's complement elements, 0: unsigned"),
)
_REQUANT = (
    Field("params", 24, "acc address of the multipliers: m0[0..n), then shift[0..n)"),
    Field("lo", 16, "lowest output value (storage minimum or a fused activation's)", True),
    Field("hi", 16, "highest output value", True),
    Field("rounding", 1, "0: gemmlowp double rounding, 1: single rounding"),
)

ISA: tuple[InstructionDef, ...] = (
    InstructionDef(
        "load",
        1,
        "load",
        "Copy a d x h x w block from DRAM to sp or acc, zero outside the source plane: element "
        "(i, j, k) reads dram + (i*sd + (j - pad_top)*sh + (k - pad_left)*sw) * bytes when "
        "0 <= j - pad_top < src_h and 0 <= k - pad_left < src_w, else 0. Stride 0 broadcasts.",
        (
            Field("to_acc", 1, "0: scratchpad, 1: accumulator"),
            Field("dram", 32, "DRAM byte address of element (0, pad_top, pad_left)"),
            Field("local", 24, "sp or acc address of the block (dense, d-h-w row major)"),
            *_BLOCK,
            *_DRAM_STRIDES,
            *_ELEMENT,
            Field("pad_top", 6, "rows of zeros above the source plane"),
            Field("pad_left", 6, "columns of zeros left of the source plane"),
            Field("src_h", 12, "height of the source plane"),
            Field("src_w", 12, "width of the source plane"),
        ),
    ),
    InstructionDef(
        "conv",
        2,
        "compute",
        "acc[n, y, x] (+)= sum_{c,i,j} wgt[n, c, i, j] * sp_in[g*cg + c, y*stride_h + i*dil_h, "
        "x*stride_w + j*dil_w] for output channel n of group g (cg = c_in / groups); a "
        "matrix multiply is a 1x1 conv. The array runs the GEMM M = oh*ow, K = cg*kh*kw, "
        "N = n/groups per group at w_bits x a_bits.",
        (
            Field("inp", 24, "sp address of the input tile [c_in, ih, iw]"),
            Field("c_in", 12, "input channels of the tile"),
            Field("ih", 12, "input tile height"),
            Field("iw", 12, "input tile width"),
            Field("wgt", 24, "sp address of the weights [n, c_in/groups, kh, kw]"),
            Field("n", 12, "output channels of the tile"),
            Field("groups", 12, "channel groups (c_in for depthwise)"),
            Field("kh", 4, "kernel height"),
            Field("kw", 4, "kernel width"),
            Field("stride_h", 4, "vertical stride"),
            Field("stride_w", 4, "horizontal stride"),
            Field("dil_h", 4, "vertical dilation"),
            Field("dil_w", 4, "horizontal dilation"),
            Field("oh", 12, "output tile height"),
            Field("ow", 12, "output tile width"),
            Field("acc", 24, "acc address of the output tile [n, oh, ow]"),
            Field("accumulate", 1, "1: add to acc, 0: overwrite"),
            Field("w_bits", 4, "weight width (BitFusion)"),
            Field("a_bits", 4, "activation width (BitFusion)"),
        ),
    ),
    InstructionDef(
        "store",
        3,
        "store",
        "Copy a d x h x w block from sp to DRAM: element (i, j, k) goes to dram + (i*sd + "
        "j*sh + k*sw) * bytes.",
        (
            Field("local", 24, "sp address of the block"),
            Field("dram", 32, "DRAM byte address of element (0, 0, 0)"),
            *_BLOCK,
            *_DRAM_STRIDES,
            *_ELEMENT,
        ),
    ),
    InstructionDef(
        "store_acc",
        4,
        "store",
        "Requantize a d x h x w int32 block of acc and write it to DRAM: q = clamp(MBQM(acc, "
        "m0[i], shift[i]), lo, hi) per depth slice i (TFLite MultiplyByQuantizedMultiplier), "
        "element (i, j, k) to dram + (i*sd + j*sh + k*sw) * bytes.",
        (
            Field("local", 24, "acc address of the block"),
            Field("dram", 32, "DRAM byte address of element (0, 0, 0)"),
            *_BLOCK,
            *_DRAM_STRIDES,
            *_ELEMENT,
            *_REQUANT,
        ),
    ),
    InstructionDef(
        "vadd",
        5,
        "vector",
        "Residual add of `count` sp elements: out = clamp(RDBPOT(MBQM(a * 2^20, m0[0], "
        "shift[0]) + MBQM(b * 2^20, m0[1], shift[1]), 20), lo, hi) (TFLite int8 ADD); the "
        "params words are acc[params..params+4) = m0 of a, m0 of b, shift of a, shift of b.",
        (
            Field("a", 24, "sp address of the first operand"),
            Field("b", 24, "sp address of the second operand"),
            Field("out", 24, "sp address of the result"),
            Field("count", 24, "elements"),
            *_REQUANT,
        ),
    ),
    InstructionDef(
        "vrequant",
        6,
        "vector",
        "Rescale `count` sp elements by one multiplier: out = clamp(MBQM(in, m0[0], "
        "shift[0]), lo, hi) (a standalone requantize, or a clamp at the same scale).",
        (
            Field("inp", 24, "sp address of the input"),
            Field("out", 24, "sp address of the result"),
            Field("count", 24, "elements"),
            *_REQUANT,
        ),
    ),
    InstructionDef(
        "vpool",
        7,
        "vector",
        "Max or average pooling of a c x ih x iw sp tile into c x oh x ow: windows kh x kw at "
        "stride, with implicit padding (max: the storage minimum, or zeros with zero_pad; "
        "avg: divisor per torch's rules with ceil_mode and count_include_pad, rounded half away "
        "from zero).",
        (
            Field("inp", 24, "sp address of the input tile"),
            Field("out", 24, "sp address of the output tile"),
            Field("c", 12, "channels"),
            Field("ih", 12, "input height"),
            Field("iw", 12, "input width"),
            Field("oh", 12, "output height"),
            Field("ow", 12, "output width"),
            Field("kh", 6, "window height"),
            Field("kw", 6, "window width"),
            Field("stride_h", 6, "vertical stride"),
            Field("stride_w", 6, "horizontal stride"),
            Field("pad_top", 6, "implicit padding above"),
            Field("pad_bottom", 6, "implicit padding below"),
            Field("pad_left", 6, "implicit padding left"),
            Field("pad_right", 6, "implicit padding right"),
            Field("avg", 1, "0: max, 1: average"),
            Field("zero_pad", 1, "max pool pads with zeros instead of the minimum"),
            Field("ceil_mode", 1, "windows may overhang (torch's ceil_mode)"),
            Field("count_include_pad", 1, "average divisor counts padding"),
            *_ELEMENT,
        ),
    ),
)

BY_MNEMONIC: Mapping[str, InstructionDef] = {d.mnemonic: d for d in ISA}
BY_OPCODE: Mapping[int, InstructionDef] = {d.opcode: d for d in ISA}


def _check_table() -> None:
    """The table's own invariants (run by tests): unique opcodes, everything fits 32 bytes."""
    assert len(BY_MNEMONIC) == len(ISA) == len(BY_OPCODE)
    for d in ISA:
        names = [f.name for f in d.all_fields]
        assert len(names) == len(set(names)), d.mnemonic
        assert sum(f.bits for f in d.all_fields) <= INSTRUCTION_BYTES * 8, d.mnemonic
        assert d.engine in ENGINES and 0 < d.opcode < (1 << HEADER[0].bits)


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction: its mnemonic and every field's value (header included)."""

    op: str
    values: tuple[tuple[str, int], ...]

    @staticmethod
    def make(op: str, **fields: int) -> Instruction:
        """An instruction with the given fields; unnamed fields are 0, `opcode` is implied."""
        definition = BY_MNEMONIC.get(op)
        if definition is None:
            raise IsaError(f"unknown instruction '{op}'; the ISA has {', '.join(BY_MNEMONIC)}")
        names = [f.name for f in definition.all_fields]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise IsaError(
                f"'{op}' has no field(s) {', '.join(unknown)}; its fields are "
                f"{', '.join(names[1:])}"
            )
        values = {name: int(fields.get(name, 0)) for name in names}
        values["opcode"] = definition.opcode
        for f in definition.all_fields:
            if not f.low <= values[f.name] <= f.high:
                raise IsaError(
                    f"'{op}' field {f.name}={values[f.name]} does not fit its "
                    f"{f.bits} bits [{f.low}, {f.high}]"
                )
        return Instruction(op, tuple(values.items()))

    @property
    def definition(self) -> InstructionDef:
        return BY_MNEMONIC[self.op]

    @property
    def engine(self) -> str:
        return self.definition.engine

    def __getitem__(self, name: str) -> int:
        for key, value in self.values:
            if key == name:
                return value
        raise KeyError(f"'{self.op}' has no field {name}")

    def fields(self) -> dict[str, int]:
        return dict(self.values)


def encode(instruction: Instruction) -> bytes:
    """32 little-endian bytes: the fields packed in table order, least significant bit first.
    A value outside its field's range is an IsaError, never silently truncated."""
    word, offset = 0, 0
    for f in instruction.definition.all_fields:
        value = instruction[f.name]
        if not f.low <= value <= f.high:
            raise IsaError(
                f"'{instruction.op}' field {f.name}={value} does not fit its "
                f"{f.bits} bits [{f.low}, {f.high}]"
            )
        word |= (value & ((1 << f.bits) - 1)) << offset
        offset += f.bits
    return word.to_bytes(INSTRUCTION_BYTES, "little")


def decode(data: bytes, offset: int = 0) -> Instruction:
    """The instruction in data[offset:offset + 32]; refuses unknown opcodes and set reserved
    bits, naming the byte offset."""
    chunk = data[offset : offset + INSTRUCTION_BYTES]
    if len(chunk) != INSTRUCTION_BYTES:
        raise IsaError(
            f"truncated instruction at byte offset {offset}: {len(chunk)} of "
            f"{INSTRUCTION_BYTES} bytes"
        )
    word = int.from_bytes(chunk, "little")
    opcode = word & ((1 << HEADER[0].bits) - 1)
    definition = BY_OPCODE.get(opcode)
    if definition is None:
        raise IsaError(f"unknown opcode {opcode} at byte offset {offset}")
    values, position = {}, 0
    for f in definition.all_fields:
        raw = (word >> position) & ((1 << f.bits) - 1)
        values[f.name] = raw - (1 << f.bits) if f.signed and raw >> (f.bits - 1) else raw
        position += f.bits
    if word >> position:
        raise IsaError(
            f"reserved bits set in a '{definition.mnemonic}' instruction at byte offset {offset}"
        )
    return Instruction(definition.mnemonic, tuple(values.items()))


def isa_markdown() -> str:
    """The instruction set as a Markdown table, generated from `ISA` (for the README and
    `dopant isa`)."""
    lines = [
        f"Every instruction is {INSTRUCTION_BYTES} bytes; the header is "
        + ", ".join(f"`{f.name}` ({f.bits} b)" for f in HEADER)
        + ".",
        "",
        "| opcode | instruction | engine | fields (bits) | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in ISA:
        fields = ", ".join(f"`{f.name}` {f.bits}" + ("s" if f.signed else "") for f in d.fields)
        lines.append(f"| {d.opcode} | `{d.mnemonic}` | {d.engine} | {fields} | {d.doc} |")
    return "\n".join(lines) + "\n"
