"""The engines' instruction queues and dependency tokens, shared by the functional simulator and
the timing model so that both order a program by the same rules.

Each engine (`dialects.isa.ENGINES`) runs its own instructions in program order. An instruction
may start only when every token in its `wait` mask is positive; it takes one count from each and,
when it completes, adds one count to every token in its `signal` mask (VTA's dependency queues,
generalized to 16 counting tokens). Where two heads could start at once, the one earlier in the
program goes first, so every run of a program is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

from dopant.dialects.isa import ENGINES, TOKENS, Instruction
from dopant.support.errors import DopantError


class SimulationError(DopantError):
    """A program that cannot run to its end: a deadlock, an access outside a memory, a value
    that does not fit where it goes. The message names the instruction (index and mnemonic)."""


def token_list(mask: int) -> tuple[int, ...]:
    """The token numbers set in a `wait`/`signal` bit mask, lowest first."""
    return tuple(t for t in range(TOKENS) if mask >> t & 1)


def engine_queues(instructions: Sequence[Instruction]) -> dict[str, list[int]]:
    """Each engine's instruction indices in program order (every engine present, maybe empty)."""
    queues: dict[str, list[int]] = {engine: [] for engine in ENGINES}
    for index, instruction in enumerate(instructions):
        queues[instruction.engine].append(index)
    return queues


def describe(index: int, instruction: Instruction) -> str:
    """How errors name an instruction: `instruction 7 (conv on compute)`."""
    return f"instruction {index} ({instruction.op} on {instruction.engine})"


def deadlock_error(
    instructions: Sequence[Instruction],
    blocked: Sequence[int],
    counts: Sequence[int],
    remaining: int,
) -> SimulationError:
    """The error for a program whose queue heads `blocked` all wait on tokens that nothing left
    running can signal; names each head with its empty tokens, and how many never ran."""
    heads = []
    for index in sorted(blocked):
        empty = [str(t) for t in token_list(instructions[index]["wait"]) if counts[t] <= 0]
        heads.append(
            f"{describe(index, instructions[index])} waits for token(s) {', '.join(empty)}"
        )
    return SimulationError(
        "the program deadlocks: "
        + "; ".join(heads)
        + f"; nothing running can signal them, so {remaining} instruction(s) never run. Check "
        "the wait/signal masks the scheduler emitted."
    )
