"""The functional simulator: runs a Program on numpy images of DRAM, scratchpad and accumulator,
bit-exact. It defines what a program computes; `runtime.timing` says how long it takes.

A run: the constant segments and the (quantized) inputs are written to a zeroed DRAM image; the
instructions execute in the engines' token order (`runtime.queues`): repeatedly, the
earliest-in-program head of the four queues whose wait tokens are all positive runs, taking one
count from each and adding one to each signalled token. If no head can run, the program has
deadlocked and SimulationError names the blocked instructions. Each instruction runs whole,
vectorized over its block (`runtime.semantics`); then the outputs are read back from DRAM.

`Program.run` / `Program.run_raw` (runtime.program) are the entry points: they pair these values
with the timing model's statistics in a `RunResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dopant.backend.image import ProgramImage, TensorDesc
from dopant.dialects.isa import TOKENS, Instruction
from dopant.runtime import intops
from dopant.runtime.memory import Memories, read_dense, write_dense
from dopant.runtime.queues import (
    SimulationError,
    deadlock_error,
    describe,
    engine_queues,
    token_list,
)
from dopant.runtime.semantics import OPS
from dopant.support.errors import InputError


@dataclass(frozen=True)
class Values:
    """What a run computed, in the order of `ProgramImage.outputs`."""

    outputs: tuple[np.ndarray, ...]  # float32, dequantized with each output's TensorDesc
    raw_outputs: tuple[np.ndarray, ...]  # int64, the integers in DRAM
    values: dict[str, np.ndarray]  # int64 intermediate values by debug-map name, when asked for


def token_order(instructions: Sequence[Instruction]) -> tuple[int, ...]:
    """The order the engines run `instructions` in: repeatedly the earliest-in-program queue
    head whose wait tokens are all positive. It depends on the instructions alone (no
    instruction's effect on memory changes a token), so a program computes it once for all its
    runs. SimulationError naming the blocked instructions if the tokens deadlock."""
    queues = engine_queues(instructions)
    heads = dict.fromkeys(queues, 0)
    waits = [token_list(i["wait"]) for i in instructions]
    counts = [0] * TOKENS
    order: list[int] = []
    while True:
        pending = [q[heads[e]] for e, q in queues.items() if heads[e] < len(q)]
        if not pending:
            return tuple(order)
        runnable = [i for i in pending if all(counts[t] > 0 for t in waits[i])]
        if not runnable:
            remaining = sum(len(q) - heads[e] for e, q in queues.items())
            raise deadlock_error(instructions, pending, counts, remaining)
        index = min(runnable)
        instruction = instructions[index]
        for token in waits[index]:
            counts[token] -= 1
        order.append(index)
        for token in token_list(instruction["signal"]):
            counts[token] += 1
        heads[instruction.engine] += 1


def execute(
    instructions: Sequence[Instruction], mem: Memories, order: Sequence[int] | None = None
) -> None:
    """Run `instructions` on `mem` in token order (`order`, from `token_order`, when the caller
    has it); SimulationError (naming the instruction) if one cannot run or the tokens
    deadlock."""
    for index in token_order(instructions) if order is None else order:
        instruction = instructions[index]
        try:
            OPS[instruction.op](instruction.fields(), mem)
        except (SimulationError, ValueError) as error:
            # intops raises ValueError for parameters out of range (a shift of 40, say).
            raise SimulationError(f"{describe(index, instruction)}: {error}") from None


def _count_check(kind: str, descs: Sequence[TensorDesc], given: int) -> None:
    if given != len(descs):
        names = ", ".join(f"'{d.name}'" for d in descs) or "none"
        raise InputError(
            f"the program takes {len(descs)} {kind} input(s) ({names}), but {given} were given"
        )


def _checked(desc: TensorDesc, value: object, kinds: str, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise InputError(
            f"input '{desc.name}' expects {what}, but an array of dtype {array.dtype} was given"
        )
    if array.shape != desc.shape:
        raise InputError(
            f"input '{desc.name}' expects shape {list(desc.shape)}, but an array of shape "
            f"{list(array.shape)} was given"
        )
    return array


def quantize_inputs(program: ProgramImage, inputs: Sequence[object]) -> list[np.ndarray]:
    """Each float input quantized with its TensorDesc (round half to even, as torch)."""
    _count_check("float", program.inputs, len(inputs))
    raw = []
    for desc, value in zip(program.inputs, inputs, strict=True):
        array = _checked(desc, value, "fiu", "real numbers")
        if np.isnan(array).any():
            raise InputError(f"input '{desc.name}' holds NaN, which cannot be quantized")
        raw.append(intops.quantize(array, desc.scale, desc.zero_point, desc.qmin, desc.qmax))
    return raw


def check_raw_inputs(program: ProgramImage, inputs: Sequence[object]) -> list[np.ndarray]:
    _count_check("integer", program.inputs, len(inputs))
    raw = []
    for desc, value in zip(program.inputs, inputs, strict=True):
        kind = f"{'' if desc.signed else 'u'}int{desc.bits}"
        array = _checked(desc, value, "iu", f"integers ({kind})")
        if array.size and (array.min() < desc.qmin or array.max() > desc.qmax):
            raise InputError(
                f"input '{desc.name}' expects {kind} values in [{desc.qmin}, {desc.qmax}], but "
                f"the array holds values in [{array.min()}, {array.max()}]"
            )
        raw.append(array.astype(np.int64))
    return raw


def _read(mem: Memories, descs: Sequence[TensorDesc], what: str) -> list[np.ndarray]:
    try:
        return [
            read_dense(mem.dram, d.dram, d.count, d.bits, d.signed).reshape(d.shape) for d in descs
        ]
    except SimulationError as error:
        raise SimulationError(f"the program's {what} cannot be read: {error}") from None


def simulate(
    program: ProgramImage,
    raw_inputs: Sequence[np.ndarray],
    keep_values: bool = False,
    order: Sequence[int] | None = None,
) -> Values:
    """Run `program` on already-quantized, checked inputs (`quantize_inputs`,
    `check_raw_inputs`); with `keep_values` read back every value of the debug map."""
    mem = Memories.empty(program.accel_config(), program.dram_bytes)
    try:
        for segment in program.segments:
            write_dense(mem.dram, segment.dram, segment.values, segment.bits, segment.signed)
        for desc, values in zip(program.inputs, raw_inputs, strict=True):
            write_dense(mem.dram, desc.dram, values, desc.bits, desc.signed)
    except SimulationError as error:
        raise SimulationError(f"the program's DRAM image cannot be built: {error}") from None
    execute(program.instructions, mem, order)
    raw = tuple(_read(mem, program.outputs, "outputs"))
    kept = program.values if keep_values else ()
    debug = dict(zip((d.name for d in kept), _read(mem, kept, "debug values"), strict=True))
    floats = tuple(
        intops.dequantize(q, d.scale, d.zero_point)
        for q, d in zip(raw, program.outputs, strict=True)
    )
    return Values(floats, raw, debug)
