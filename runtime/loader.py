"""Load a `.dpb` binary and check that it means something on its machine.

`backend.binary.read_program` refuses malformed files; `validate` then refuses programs that are
well formed but would go wrong on the accelerator: fields that make no sense for an engine,
accesses past a memory, widths the array cannot fuse, pooling geometry that is not torch's,
dependency tokens that deadlock, constants and I/O tensors outside DRAM or on top of each other,
debug ranges outside the code, layer GEMMs that are not the work of their layer's convs. Each
error names the instruction index, its byte offset in the file when known, and the field.
No xDSL here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import pairwise

from dopant.backend.binary import (
    BinaryError,
    SectionKind,
    decode_program,
    read_binary_file,
    read_container,
)
from dopant.backend.costs import instruction_cost
from dopant.backend.image import LayerGemm, ProgramImage, TensorDesc, element_bytes, storage_range
from dopant.backend.target import AccelConfig
from dopant.dialects.isa import ENGINES, INSTRUCTION_BYTES, TOKENS, Instruction
from dopant.dialects.shapes import window_out
from dopant.runtime.program import Program
from dopant.support.errors import DopantError

SP_BITS = (2, 4, 8)  # scratchpad element widths; the accumulator holds int32 only
SP_VALUES = (-128, 255)  # one scratchpad byte holds an int8 or a uint8


class _Problem(Exception):
    """One field of one instruction at fault; `validate` adds which instruction."""


def load(source: bytes | str | os.PathLike[str], config: AccelConfig | None = None) -> Program:
    """The program in `source` (the bytes of a binary, or its path), checked for its machine.

    With `config`, the binary must have been compiled for that machine (same stable hash).
    Raises BinaryError naming what is wrong; never another exception for bad input.
    """
    data = bytes(source) if isinstance(source, bytes | bytearray) else read_binary_file(source)
    container = read_container(data)
    program = decode_program(container)
    if config is not None and config.stable_hash() != program.config_hash:
        compiled_for = program.config.get("name")
        raise BinaryError(
            f"the binary was compiled for accelerator '{compiled_for}' (config hash "
            f"{program.config_hash.hex()[:16]}) but the target is '{config.name}' (config hash "
            f"{config.stable_hash().hex()[:16]}); recompile it for '{config.name}'"
        )
    validate(program, container.sections[SectionKind.CODE][0])
    return Program.of(program)


def validate(program: ProgramImage, code_offset: int | None = None) -> AccelConfig:
    """Check `program` against its machine and return that machine.

    `code_offset` is the file offset of the CODE section, so errors can give each instruction's
    byte offset. Raises BinaryError for the first problem found.
    """
    try:
        machine = AccelConfig.from_dict(dict(program.config), "the program's config")
    except (DopantError, TypeError) as error:
        raise BinaryError(f"field config is not a valid accelerator config: {error}") from None
    if machine.stable_hash() != program.config_hash:
        raise BinaryError(f"field config_hash is not the hash of config '{machine.name}'")
    for index, instruction in enumerate(program.instructions):
        if instruction.op not in _CHECKS:  # only a hand-built Instruction can get here
            raise BinaryError(f"instruction {index} has unknown mnemonic '{instruction.op}'")
        try:
            _CHECKS[instruction.op](instruction.fields(), machine, program.dram_bytes)
        except _Problem as problem:
            raise BinaryError(f"{_where(index, instruction, code_offset)}: {problem}") from None
    _check_tokens(program.instructions, code_offset)
    _check_dram(program)
    _check_layers(program)
    _check_gemms(program, machine)
    return machine


def _where(index: int, instruction: Instruction, code_offset: int | None) -> str:
    if code_offset is None:
        return f"instruction {index} ({instruction.op})"
    at = code_offset + index * INSTRUCTION_BYTES
    return f"instruction {index} ({instruction.op} at byte offset {at})"


# ---- field checks shared by the instructions ----------------------------------------------


def _at_least_one(f: dict[str, int], *names: str) -> None:
    for name in names:
        if f[name] < 1:
            raise _Problem(f"field {name}={f[name]} must be at least 1")


def _in_scratchpad(f: dict[str, int], name: str, elements: int, m: AccelConfig) -> None:
    if f[name] + elements > m.scratchpad_bytes:
        raise _Problem(
            f"field {name}={f[name]} with {elements} elements runs past the "
            f"{m.scratchpad_bytes}-byte scratchpad"
        )


def _in_accumulator(f: dict[str, int], name: str, words: int, m: AccelConfig) -> None:
    if f[name] + words > m.accumulator_words:
        raise _Problem(
            f"field {name}={f[name]} with {words} words runs past the "
            f"{m.accumulator_words}-word accumulator"
        )


def _sp_bits(f: dict[str, int]) -> None:
    if f["bits"] not in SP_BITS:
        raise _Problem(f"field bits={f['bits']} is not a scratchpad width {SP_BITS}")


def _in_dram(f: dict[str, int], rows: int, cols: int, dram_bytes: int) -> None:
    """The block's DRAM bytes: depth d, `rows` x `cols` elements per slice at the strides."""
    size = element_bytes(f["bits"])
    if size == 4 and f["dram"] % 4:
        raise _Problem(f"field dram={f['dram']} is not 4-byte aligned for int32 elements")
    if f["d"] < 1 or rows < 1 or cols < 1:
        return  # nothing is read from DRAM (a load of padding only)
    last = (f["d"] - 1) * f["sd"] + (rows - 1) * f["sh"] + (cols - 1) * f["sw"]
    end = f["dram"] + (last + 1) * size
    if end > dram_bytes:
        raise _Problem(
            f"field dram={f['dram']} with strides sd={f['sd']}, sh={f['sh']}, sw={f['sw']} "
            f"reaches byte {end}, past the program's {dram_bytes}-byte DRAM"
        )


def _requant(f: dict[str, int], channels: int, low: int, high: int, m: AccelConfig) -> None:
    """Multipliers m0[0..channels) then shift[0..channels) in acc, and lo <= hi in range."""
    _in_accumulator(f, "params", 2 * channels, m)
    if not low <= f["lo"] <= f["hi"] <= high:
        raise _Problem(
            f"fields lo={f['lo']}, hi={f['hi']} must satisfy {low} <= lo <= hi <= {high}"
        )


# ---- one check per instruction ------------------------------------------------------------


def _load(f: dict[str, int], m: AccelConfig, dram_bytes: int) -> None:
    _at_least_one(f, "d", "h", "w")
    elements = f["d"] * f["h"] * f["w"]
    if f["to_acc"]:
        if f["bits"] != 32 or not f["signed"]:
            raise _Problem(
                f"field bits={f['bits']} (signed={f['signed']}) must be 32 and signed: "
                "the accumulator holds int32"
            )
        _in_accumulator(f, "local", elements, m)
    else:
        _sp_bits(f)
        _in_scratchpad(f, "local", elements, m)
    # Only the source plane is read; the rest of the block is padding.
    rows = min(f["src_h"], f["h"] - f["pad_top"])
    cols = min(f["src_w"], f["w"] - f["pad_left"])
    _in_dram(f, rows, cols, dram_bytes)


def _conv(f: dict[str, int], m: AccelConfig, dram_bytes: int) -> None:
    _at_least_one(f, "c_in", "ih", "iw", "n", "groups", "kh", "kw", "oh", "ow")
    _at_least_one(f, "stride_h", "stride_w", "dil_h", "dil_w")
    for name in ("c_in", "n"):
        if f[name] % f["groups"]:
            raise _Problem(f"field groups={f['groups']} does not divide {name}={f[name]}")
    for axis in ("h", "w"):
        need = (f[f"o{axis}"] - 1) * f[f"stride_{axis}"] + (f[f"k{axis}"] - 1) * f[f"dil_{axis}"]
        if f[f"i{axis}"] < need + 1:
            raise _Problem(
                f"field i{axis}={f[f'i{axis}']} is less than the {need + 1} that "
                f"o{axis}, k{axis}, stride_{axis} and dil_{axis} read"
            )
    for name, widths in (("w_bits", m.weight_bits), ("a_bits", m.act_bits)):
        if f[name] not in widths:
            raise _Problem(f"field {name}={f[name]} is not supported by '{m.name}' {widths}")
    _in_scratchpad(f, "inp", f["c_in"] * f["ih"] * f["iw"], m)
    weights = f["n"] * (f["c_in"] // f["groups"]) * f["kh"] * f["kw"]
    _in_scratchpad(f, "wgt", weights, m)
    _in_accumulator(f, "acc", f["n"] * f["oh"] * f["ow"], m)


def _store(f: dict[str, int], m: AccelConfig, dram_bytes: int) -> None:
    _at_least_one(f, "d", "h", "w")
    _sp_bits(f)
    _in_scratchpad(f, "local", f["d"] * f["h"] * f["w"], m)
    _in_dram(f, f["h"], f["w"], dram_bytes)


def _store_acc(f: dict[str, int], m: AccelConfig, dram_bytes: int) -> None:
    _at_least_one(f, "d", "h", "w")
    _sp_bits(f)  # the requantized output width; the source is int32 acc
    _in_accumulator(f, "local", f["d"] * f["h"] * f["w"], m)
    low, high = storage_range(f["bits"], bool(f["signed"]))
    _requant(f, f["d"], low, high, m)
    _in_dram(f, f["h"], f["w"], dram_bytes)


def _vadd(f: dict[str, int], m: AccelConfig, dram_bytes: int) -> None:
    _at_least_one(f, "count")
    for name in ("a", "b", "out"):
        _in_scratchpad(f, name, f["count"], m)
    _requant(f, 2, *SP_VALUES, m)


def _vrequant(f: dict[str, int], m: AccelConfig, dram_bytes: int) -> None:
    _at_least_one(f, "count")
    for name in ("inp", "out"):
        _in_scratchpad(f, name, f["count"], m)
    _requant(f, 1, *SP_VALUES, m)


def _vpool(f: dict[str, int], m: AccelConfig, dram_bytes: int) -> None:
    _at_least_one(f, "c", "ih", "iw", "oh", "ow", "kh", "kw", "stride_h", "stride_w")
    _sp_bits(f)
    if f["zero_pad"] and f["avg"]:
        raise _Problem("field zero_pad=1 applies to max pooling only, but avg=1")
    if f["count_include_pad"] and not f["avg"]:
        raise _Problem("field count_include_pad=1 applies to average pooling only, but avg=0")
    for axis, low_pad, high_pad in (("h", "pad_top", "pad_bottom"), ("w", "pad_left", "pad_right")):
        kernel = f[f"k{axis}"]
        for pad in (low_pad, high_pad):
            # torch: "pad should be at most half of effective kernel size"
            if f[pad] > kernel // 2:
                raise _Problem(f"field {pad}={f[pad]} is over half of k{axis}={kernel}")
        size, stride = f[f"i{axis}"], f[f"stride_{axis}"]
        out = window_out(size, kernel, stride, f[low_pad], f[high_pad], 1, bool(f["ceil_mode"]))
        if f[f"o{axis}"] != out:
            raise _Problem(
                f"field o{axis}={f[f'o{axis}']} is not the {out} that torch's output-size rule "
                f"gives for i{axis}, k{axis}, stride_{axis}, padding and ceil_mode"
            )
    _in_scratchpad(f, "inp", f["c"] * f["ih"] * f["iw"], m)
    _in_scratchpad(f, "out", f["c"] * f["oh"] * f["ow"], m)


_CHECKS: dict[str, Callable[[dict[str, int], AccelConfig, int], None]] = {
    "load": _load,
    "conv": _conv,
    "store": _store,
    "store_acc": _store_acc,
    "vadd": _vadd,
    "vrequant": _vrequant,
    "vpool": _vpool,
}


# ---- whole-program checks -----------------------------------------------------------------


def _check_tokens(instructions: tuple[Instruction, ...], code_offset: int | None) -> None:
    """Run the engines' queues abstractly (each in order, an instruction completing as soon as
    it starts) and refuse a program that stops with instructions left: their waits never clear.

    With one producer and one consumer per token, as a scheduler emits them, the order in which
    the engines run does not change the outcome, so this finds exactly the programs that hang.
    """
    queues: dict[str, list[int]] = {engine: [] for engine in ENGINES}
    for index, instruction in enumerate(instructions):
        queues[instruction.engine].append(index)
    tokens = [(_bits(i["wait"]), _bits(i["signal"])) for i in instructions]
    counts, heads = [0] * TOKENS, dict.fromkeys(ENGINES, 0)
    progress = True
    while progress:
        progress = False
        for engine, queue in queues.items():
            while heads[engine] < len(queue):
                waits, signals = tokens[queue[heads[engine]]]
                if not all(counts[t] for t in waits):
                    break
                for t in waits:
                    counts[t] -= 1
                for t in signals:
                    counts[t] += 1
                heads[engine] += 1
                progress = True
    stuck = [queue[heads[e]] for e, queue in queues.items() if heads[e] < len(queue)]
    if not stuck:
        return
    index = min(stuck)
    empty = [str(t) for t in tokens[index][0] if not counts[t]]
    raise BinaryError(
        f"{_where(index, instructions[index], code_offset)}: field "
        f"wait={instructions[index]['wait']:#b} never clears: token(s) {', '.join(empty)} "
        "are not signalled enough, so the program deadlocks"
    )


def _bits(mask: int) -> list[int]:
    return [t for t in range(TOKENS) if mask >> t & 1]


def _dram_span(label: str, start: int, count: int, bits: int, dram_bytes: int) -> int:
    """The end of a region that lies inside DRAM, int32 data aligned."""
    end = start + count * element_bytes(bits)
    if element_bytes(bits) == 4 and start % 4:
        raise BinaryError(f"{label}: field dram={start} is not 4-byte aligned for int32 data")
    if end > dram_bytes:
        raise BinaryError(
            f"{label}: DRAM bytes [{start}, {end}) run past field dram_bytes={dram_bytes}"
        )
    return end


def _check_dram(program: ProgramImage) -> None:
    """Constants and I/O tensors lie inside DRAM, int32 data aligned, none on top of another;
    debug values lie inside DRAM (an output is also a value, so they may share bytes)."""
    regions = [
        (f"constant segment {i}", s.dram, len(s.values), s.bits)
        for i, s in enumerate(program.segments)
    ]
    for kind, tensors in (("input", program.inputs), ("output", program.outputs)):
        _unique_names(f"field {kind}s", tensors)
        regions += [(f"{kind} '{t.name}'", t.dram, t.count, t.bits) for t in tensors]
    _unique_names("the debug map's values", program.values)
    for t in program.values:
        _dram_span(f"debug value '{t.name}'", t.dram, t.count, t.bits, program.dram_bytes)
    spans = []
    for label, start, count, bits in regions:
        end = _dram_span(label, start, count, bits, program.dram_bytes)
        if end > start:
            spans.append((start, end, label))
    spans.sort()
    for (start, end, label), (next_start, next_end, next_label) in pairwise(spans):
        if next_start < end:
            raise BinaryError(
                f"{next_label}: field dram={next_start} puts DRAM bytes [{next_start}, "
                f"{next_end}) on top of {label} at [{start}, {end})"
            )


def _unique_names(what: str, tensors: tuple[TensorDesc, ...]) -> None:
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise BinaryError(f"{what} repeats a tensor name: {', '.join(repeated)}")


def _check_layers(program: ProgramImage) -> None:
    """Debug ranges lie inside the code and do not overlap."""
    code = len(program.instructions)
    for layer in program.layers:
        if not 0 <= layer.start <= layer.stop <= code:
            raise BinaryError(
                f"debug map entry '{layer.name}': fields start={layer.start}, stop={layer.stop} "
                f"are not a range of the {code} instructions"
            )
    ranges = sorted((r.start, r.stop, r.name) for r in program.layers if r.stop > r.start)
    for (_, stop, name), (start, _, other) in pairwise(ranges):
        if start < stop:
            raise BinaryError(
                f"debug map entry '{other}': field start={start} overlaps '{name}', which "
                f"stops at {stop}"
            )


def _check_gemms(program: ProgramImage, m: AccelConfig) -> None:
    """Each layer's GEMMs are fusible on the machine and are the work of its conv instructions
    (the same MACs at the same widths), so the fold model computed from them is the layer's."""
    gemms: dict[str, list[LayerGemm]] = {}
    for g in program.gemms:
        for field, widths in (("w_bits", m.weight_bits), ("a_bits", m.act_bits)):
            if (width := getattr(g, field)) not in widths:
                raise BinaryError(
                    f"debug map GEMM '{g.name}': field {field}={width} is not supported by "
                    f"'{m.name}' {widths}"
                )
        gemms.setdefault(g.name, []).append(g)
    convs: dict[str, list[int]] = {}
    for r in program.layers:
        code = range(r.start, r.stop)
        convs.setdefault(r.name, []).extend(i for i in code if program.instructions[i].op == "conv")
    for name in dict.fromkeys([*convs, *gemms]):
        want = sum(g.macs for g in gemms.get(name, []))
        done = sum(instruction_cost(program.instructions[i], m).macs for i in convs.get(name, []))
        if done != want:
            raise BinaryError(
                f"debug map layer '{name}': its GEMMs (fields groups * m * k * n) give {want} "
                f"MACs but its conv instructions do {done}; the GEMMs must describe its convs"
            )
        fused = {(g.w_bits, g.a_bits) for g in gemms.get(name, [])}
        for i in convs.get(name, []):
            conv = program.instructions[i]
            if (conv["w_bits"], conv["a_bits"]) not in fused:
                raise BinaryError(
                    f"debug map layer '{name}': instruction {i} (conv) fields w_bits="
                    f"{conv['w_bits']}, a_bits={conv['a_bits']} are the widths of none of its GEMMs"
                )
