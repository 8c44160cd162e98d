"""The functional simulator: runs a Program on numpy images of DRAM, scratchpad and accumulator,
bit-exact. It defines what a program computes; `runtime.timing` says how long it takes.

A run is of a batch of N images through a program compiled for one (N = 1 is the plain run): the
memories have a leading batch axis, a machine per image (`runtime.memory`), and each instruction
runs once for all of them (`runtime.semantics`), so its Python overhead is paid once per batch,
not per image. Every image computes exactly what it computes alone: the instructions and their
order do not depend on the values, and no instruction mixes images. The batch is cut into chunks
of at most `_CHUNK_BYTES` of memory images; a chunk's size changes no value.

For each chunk: the constant segments (the same for every image) and each image's (quantized)
inputs are written to a zeroed DRAM image; the
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
from dopant.runtime.memory import Memories, read_dense, which_image, write_dense
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
    batch: int  # N, the images run; every array above has a leading N axis when N > 1


# The memory images (DRAM, scratchpad, accumulator) of at most this many bytes are simulated at
# once: a bound on the host's memory for a large batch, yet chunks of a hundred or more images,
# which share each instruction's Python overhead as well as one batch would.
_CHUNK_BYTES = 256 << 20


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


def _expected_shape(desc: TensorDesc) -> str:
    """The shapes an input accepts, as an error states them: the declared one and, when it
    leads with a batch of 1, the same with a batch of N."""
    if desc.shape[:1] != (1,):
        return f"shape {list(desc.shape)}"
    rest = "".join(f", {n}" for n in desc.shape[1:])
    return f"shape {list(desc.shape)} (or [N{rest}] for a batch of N images)"


def _checked(desc: TensorDesc, value: object, kinds: str, what: str) -> np.ndarray:
    """`value` as [N, elements of one image]: the declared shape is one image; an array whose
    first axis replaces a declared leading 1 holds N of them."""
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise InputError(
            f"input '{desc.name}' expects {what}, but an array of dtype {array.dtype} was given; "
            "convert it first (e.g. with .astype)"
        )
    if array.shape == desc.shape:
        return array.reshape(1, -1)
    if desc.shape[:1] == (1,) and array.shape[1:] == desc.shape[1:] and array.ndim:
        if not len(array):
            raise InputError(f"input '{desc.name}' holds no images (shape {list(array.shape)})")
        return array.reshape(len(array), -1)
    raise InputError(
        f"input '{desc.name}' expects {_expected_shape(desc)}, but an array of shape "
        f"{list(array.shape)} was given"
    )


def _same_batch(
    descs: Sequence[TensorDesc], arrays: Sequence[np.ndarray], given: Sequence[object]
) -> None:
    """Every input must hold the same number of images: image i is a whole network input."""
    for desc, array, value in zip(descs, arrays, given, strict=True):
        if len(array) != len(arrays[0]):
            raise InputError(
                f"input '{desc.name}' holds {len(array)} image(s) (shape "
                f"{list(np.asarray(value).shape)}) but input '{descs[0].name}' holds "
                f"{len(arrays[0])} (shape {list(np.asarray(given[0]).shape)}); give every input "
                "the same batch"
            )


def quantize_inputs(program: ProgramImage, inputs: Sequence[object]) -> list[np.ndarray]:
    """Each float input quantized with its TensorDesc (round half to even, as torch), as int64
    [N, elements of one image]. Integer arrays count as real numbers (uint8 pixels are
    quantized as the values they are, not normalized)."""
    _count_check("float", program.inputs, len(inputs))
    checked = [
        _checked(d, v, "fiu", "real numbers (a float or integer array)")
        for d, v in zip(program.inputs, inputs, strict=True)
    ]
    _same_batch(program.inputs, checked, inputs)
    raw = []
    for desc, array in zip(program.inputs, checked, strict=True):
        if array.dtype.kind == "f" and np.isnan(array).any():
            raise InputError(
                f"input '{desc.name}' holds NaN, which cannot be quantized"
                f"{which_image(np.isnan(array))}"
            )
        raw.append(intops.quantize(array, desc.scale, desc.zero_point, desc.qmin, desc.qmax))
    return raw


def check_raw_inputs(program: ProgramImage, inputs: Sequence[object]) -> list[np.ndarray]:
    """Each integer input checked against its TensorDesc's range, as int64 [N, elements]."""
    _count_check("integer", program.inputs, len(inputs))
    kinds = [f"{'' if d.signed else 'u'}int{d.bits}" for d in program.inputs]
    checked = [
        _checked(d, v, "iu", f"integers ({kind})")
        for d, v, kind in zip(program.inputs, inputs, kinds, strict=True)
    ]
    _same_batch(program.inputs, checked, inputs)
    for desc, array, kind in zip(program.inputs, checked, kinds, strict=True):
        if array.size and (array.min() < desc.qmin or array.max() > desc.qmax):
            raise InputError(
                f"input '{desc.name}' expects {kind} values in [{desc.qmin}, {desc.qmax}], but "
                f"the array holds values in [{array.min()}, {array.max()}]"
                f"{which_image((array < desc.qmin) | (array > desc.qmax))}"
            )
    return [array.astype(np.int64) for array in checked]


def initial_memories(program: ProgramImage, raw_inputs: Sequence[np.ndarray]) -> Memories:
    """The memories before the first instruction, for a batch of len(raw_inputs[0]) images
    (one without inputs): zeroed, the constant segments in every image's DRAM and each image's
    inputs ([N, elements], `quantize_inputs`) in its own."""
    batch = len(raw_inputs[0]) if len(raw_inputs) else 1
    mem = Memories.empty(program.accel_config(), program.dram_bytes, batch)
    try:
        for segment in program.segments:
            values = segment.values[None]  # one row, written to every image
            write_dense(mem.dram, segment.dram, values, segment.bits, segment.signed)
        for desc, values in zip(program.inputs, raw_inputs, strict=True):
            write_dense(mem.dram, desc.dram, values, desc.bits, desc.signed)
    except SimulationError as error:
        raise SimulationError(f"the program's DRAM image cannot be built: {error}") from None
    return mem


def read_tensors(mem: Memories, descs: Sequence[TensorDesc], what: str) -> list[np.ndarray]:
    """The integers of `descs` in every image's DRAM, as int64 [N, elements of one image]."""
    try:
        return [read_dense(mem.dram, d.dram, d.count, d.bits, d.signed) for d in descs]
    except SimulationError as error:
        raise SimulationError(f"the program's {what} cannot be read: {error}") from None


def batch_shape(shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    """The shape of a tensor of one image's `shape` over a batch: the declared shape for one
    image; for N > 1 the leading batch of 1 becomes N (a shape without it gains a leading N)."""
    if batch == 1:
        return shape
    return (batch, *shape[1:]) if shape[:1] == (1,) else (batch, *shape)


def simulate(
    program: ProgramImage,
    raw_inputs: Sequence[np.ndarray],
    keep_values: bool = False,
    order: Sequence[int] | None = None,
    chunk: int | None = None,
) -> Values:
    """Run `program` on a batch of already-quantized, checked inputs ([N, elements] each:
    `quantize_inputs`, `check_raw_inputs`), `chunk` images at a time (by default as many as
    `_CHUNK_BYTES` of memories hold); with `keep_values` read back every value of the debug
    map."""
    batch = len(raw_inputs[0]) if len(raw_inputs) else 1
    config = program.accel_config()
    if chunk is None:
        image_bytes = program.dram_bytes + 4 * config.scratchpad_bytes
        chunk = max(1, _CHUNK_BYTES // (image_bytes + 8 * config.accumulator_words))
    kept = program.values if keep_values else ()
    parts: list[list[np.ndarray]] = []
    for start in range(0, batch, chunk):
        mem = initial_memories(program, [r[start : start + chunk] for r in raw_inputs])
        execute(program.instructions, mem, order)
        parts.append(
            read_tensors(mem, program.outputs, "outputs") + read_tensors(mem, kept, "debug values")
        )
    descs = (*program.outputs, *kept)
    whole = [
        np.concatenate([p[i] for p in parts]).reshape(batch_shape(d.shape, batch))
        for i, d in enumerate(descs)
    ]
    raw = tuple(whole[: len(program.outputs)])
    debug = {d.name: v for d, v in zip(kept, whole[len(program.outputs) :], strict=True)}
    floats = tuple(
        intops.dequantize(q, d.scale, d.zero_point)
        for q, d in zip(raw, program.outputs, strict=True)
    )
    return Values(floats, raw, debug, batch)
