"""The timing model: when each instruction starts and ends on the four engines. It computes no
values: it reads only instruction fields and the AccelConfig (costs in `backend.costs`).

Event-driven, in integer cycles from 0. An instruction starts at the first cycle at which
(1) its engine has finished the instruction before it (each engine runs its queue in program
order, one at a time), (2) every token in its `wait` mask is positive, and (3) for a DRAM
instruction (load, store, store_acc), the one DRAM channel, shared by the load and store
engines, is free. Starting takes one count from each waited token; completing adds one to each
signalled token, and the count is usable in the cycle it completes. When several heads can
start in the same cycle, the earliest in the program goes first (it may take a token or the
channel the others wanted), the same rule the functional simulator uses.

A DRAM instruction holds the channel for its `channel_cycles` from its start and completes
`cycles` after its start (the latency is pipelined, but its engine waits for completion).

Stalls are named: while an engine's head cannot start, each cycle counts as `token_wait` if
some waited token is empty, else as `dram_wait` (tokens there, channel busy).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from dopant.backend.costs import Cost, CostError, instruction_cost
from dopant.backend.target import AccelConfig
from dopant.dialects.isa import ENGINES, TOKENS, Instruction
from dopant.runtime.queues import (
    SimulationError,
    deadlock_error,
    describe,
    engine_queues,
    token_list,
)

STALLS = ("token_wait", "dram_wait")


@dataclass(frozen=True)
class Slot:
    """When one instruction ran, and how long its engine waited for it before it started."""

    index: int
    op: str
    engine: str
    start_cycle: int
    end_cycle: int
    token_wait_cycles: int
    dram_wait_cycles: int

    @property
    def cycles(self) -> int:
        return self.end_cycle - self.start_cycle


@dataclass(frozen=True)
class Timeline:
    """Every instruction's slot and cost, in program order, and when the last one ends."""

    slots: tuple[Slot, ...]
    costs: tuple[Cost, ...]
    total_cycles: int


class _Run:
    """The mutable state of one event-driven schedule."""

    def __init__(self, instructions: Sequence[Instruction], costs: Sequence[Cost]):
        self.instructions, self.costs = instructions, costs
        self.waits = [token_list(i["wait"]) for i in instructions]
        self.signals = [token_list(i["signal"]) for i in instructions]
        self.queues = engine_queues(instructions)
        self.heads = dict.fromkeys(ENGINES, 0)
        self.busy_until = dict.fromkeys(ENGINES, 0)
        self.counts = [0] * TOKENS
        self.completions: list[tuple[int, int]] = []  # heap of (end cycle, index)
        self.channel_free = 0
        self.now = 0
        count = len(instructions)
        self.start, self.end = [0] * count, [0] * count
        self.stalls = [[0, 0] for _ in range(count)]  # token_wait, dram_wait

    def complete_due(self) -> None:
        while self.completions and self.completions[0][0] <= self.now:
            _, index = heapq.heappop(self.completions)
            for token in self.signals[index]:
                self.counts[token] += 1

    def waiting(self) -> list[int]:
        """Heads of engines that are free now, in program order."""
        return sorted(
            queue[self.heads[engine]]
            for engine, queue in self.queues.items()
            if self.heads[engine] < len(queue) and self.busy_until[engine] <= self.now
        )

    def has_tokens(self, index: int) -> bool:
        return all(self.counts[t] > 0 for t in self.waits[index])

    def can_start(self, index: int) -> bool:
        if not self.has_tokens(index):
            return False
        return not self.costs[index].uses_dram or self.channel_free <= self.now

    def begin(self, index: int) -> None:
        cost, engine = self.costs[index], self.instructions[index].engine
        for token in self.waits[index]:
            self.counts[token] -= 1
        if cost.uses_dram:
            self.channel_free = self.now + cost.channel_cycles
        self.start[index], self.end[index] = self.now, self.now + cost.cycles
        self.busy_until[engine] = self.end[index]
        heapq.heappush(self.completions, (self.end[index], index))
        self.heads[engine] += 1

    def remaining(self) -> int:
        return sum(len(queue) - self.heads[e] for e, queue in self.queues.items())

    def advance(self, waiting: list[int]) -> None:
        """Move to the next cycle anything changes, charging the wait to each blocked head."""
        upcoming = [self.completions[0][0]] if self.completions else []
        if self.channel_free > self.now:
            upcoming.append(self.channel_free)
        if not upcoming:
            raise deadlock_error(self.instructions, waiting, self.counts, self.remaining())
        step = min(upcoming) - self.now
        for index in waiting:
            # With its tokens there, only the busy channel can be holding a head back.
            self.stalls[index][1 if self.has_tokens(index) else 0] += step
        self.now += step

    def run(self) -> None:
        while self.remaining():
            self.complete_due()
            waiting = self.waiting()
            ready = next((index for index in waiting if self.can_start(index)), None)
            if ready is None:
                self.advance(waiting)
            else:
                self.begin(ready)


def _cost(index: int, instruction: Instruction, config: AccelConfig) -> Cost:
    try:
        return instruction_cost(instruction, config)
    except CostError as error:
        raise SimulationError(f"{describe(index, instruction)}: {error}") from None


def schedule(instructions: Sequence[Instruction], config: AccelConfig) -> Timeline:
    """The timeline of `instructions` on `config`; SimulationError if the tokens deadlock or an
    instruction asks for something the machine cannot do (a bit width it does not fuse)."""
    costs = tuple(_cost(i, ins, config) for i, ins in enumerate(instructions))
    run = _Run(instructions, costs)
    run.run()
    slots = tuple(
        Slot(i, ins.op, ins.engine, run.start[i], run.end[i], *run.stalls[i])
        for i, ins in enumerate(instructions)
    )
    return Timeline(slots, costs, max(run.end, default=0))
