"""The timing model: when each instruction starts and ends on the four engines. It computes no
values: it reads only instruction fields and the AccelConfig (costs in `backend.costs`).

Event-driven, in integer cycles from 0. An instruction starts at the first cycle at which
(1) its engine can take it: the engine runs its queue in program order, and has finished the
instruction before it, except that a DMA (load, store, store_acc) may start once the previous
one's `issue_cycles` are over while fewer than `dma_outstanding_requests` of its engine's are
in flight (started, not completed); (2) every token in its `wait` mask is positive; and (3) for
a DMA, the one DRAM channel, shared by the load and store engines, is free. Starting takes one
count from each waited token; completing adds one to each signalled token, and the count is
usable in the cycle it completes. When several heads can start in the same cycle, the earliest
in the program goes first (it may take a token or the channel the others wanted), the same rule
the functional simulator uses.

A DMA holds the channel for its `channel_cycles` from its start and completes `cycles` =
L + S after it (S its `issue_cycles`; the latency L pipelines behind the next DMAs' transfers).
Every engine completes its instructions in program order: a DMA starts no earlier than S_(i-1)
after the previous one, so it ends at s_i + L + S_i >= s_(i-1) + S_(i-1) + L = e_(i-1) (one
latency for all DMAs); other instructions run one at a time. That keeps the contract the
lowering's tokens rely on (`passes/_convert_qnn_to_accel/schedule`: a signal means every
earlier instruction of its engine is done), and overlapping DMAs of one engine keep the
functional simulator's meaning, where each runs whole in program order: a load reads DRAM and
writes on chip, a store the reverse, so no DMA reads what an earlier one of its engine writes,
and their writes land in program order (each one's transfer starts after the previous one's).

Stalls are named: while an engine could take its head but the head cannot start, each cycle
counts as `token_wait` if some waited token is empty, else as `dram_wait` (tokens there, channel
busy). An engine with its limit of DMAs in flight is busy, not stalled; with fewer in flight it
can be both (a DMA outstanding, the next one held back), so an engine's busy cycles are the
union of its instructions' spans (`busy_cycles`), not their sum.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
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
    lane: int = 0  # which of its engine's in-flight places it took (0 if one at a time)

    @property
    def cycles(self) -> int:
        return self.end_cycle - self.start_cycle


@dataclass(frozen=True)
class Timeline:
    """Every instruction's slot and cost, in program order, and when the last one ends."""

    slots: tuple[Slot, ...]
    costs: tuple[Cost, ...]
    total_cycles: int


def busy_cycles(slots: Iterable[Slot]) -> int:
    """Cycles in which at least one of `slots` runs (the union of their spans)."""
    busy, covered = 0, 0
    for slot in sorted(slots, key=lambda s: s.start_cycle):
        start = max(slot.start_cycle, covered)
        if slot.end_cycle > start:
            busy += slot.end_cycle - start
            covered = slot.end_cycle
    return busy


class _Run:
    """The mutable state of one event-driven schedule."""

    def __init__(
        self, instructions: Sequence[Instruction], costs: Sequence[Cost], outstanding: int
    ):
        self.instructions, self.costs, self.outstanding = instructions, costs, outstanding
        self.waits = [token_list(i["wait"]) for i in instructions]
        self.signals = [token_list(i["signal"]) for i in instructions]
        self.queues = engine_queues(instructions)
        self.heads = dict.fromkeys(ENGINES, 0)
        self.issue_free = dict.fromkeys(ENGINES, 0)  # when its data path can start the next
        # (end cycle, lane) of each engine's started instructions not yet complete, oldest first
        self.in_flight: dict[str, deque[tuple[int, int]]] = {e: deque() for e in ENGINES}
        self.counts = [0] * TOKENS
        self.completions: list[tuple[int, int]] = []  # heap of (end cycle, index)
        self.channel_free = 0
        self.now = 0
        count = len(instructions)
        self.start, self.end, self.lane = [0] * count, [0] * count, [0] * count
        self.stalls = [[0, 0] for _ in range(count)]  # token_wait, dram_wait

    def complete_due(self) -> None:
        while self.completions and self.completions[0][0] <= self.now:
            _, index = heapq.heappop(self.completions)
            for token in self.signals[index]:
                self.counts[token] += 1
        for flight in self.in_flight.values():
            while flight and flight[0][0] <= self.now:
                flight.popleft()

    def pending(self) -> list[str]:
        return [e for e, queue in self.queues.items() if self.heads[e] < len(queue)]

    def takes_head(self, engine: str) -> bool:
        """Whether `engine` can take its head now (its tokens and the channel aside)."""
        head = self.queues[engine][self.heads[engine]]
        limit = self.outstanding if self.costs[head].uses_dram else 1
        return self.issue_free[engine] <= self.now and len(self.in_flight[engine]) < limit

    def waiting(self) -> list[int]:
        """Heads of engines that can take them now, in program order."""
        return sorted(
            self.queues[engine][self.heads[engine]]
            for engine in self.pending()
            if self.takes_head(engine)
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
        end = self.now + cost.cycles  # after the engine's earlier ones (module docstring)
        taken = {lane for _, lane in self.in_flight[engine]}
        lane = next(lane for lane in range(len(taken) + 1) if lane not in taken)
        self.start[index], self.end[index], self.lane[index] = self.now, end, lane
        self.issue_free[engine] = self.now + cost.issue_cycles
        self.in_flight[engine].append((end, lane))
        heapq.heappush(self.completions, (end, index))
        self.heads[engine] += 1

    def remaining(self) -> int:
        return sum(len(queue) - self.heads[e] for e, queue in self.queues.items())

    def advance(self, waiting: list[int]) -> None:
        """Move to the next cycle anything changes, charging the wait to each blocked head."""
        upcoming = [self.completions[0][0]] if self.completions else []
        if self.channel_free > self.now:
            upcoming.append(self.channel_free)
        upcoming += [self.issue_free[e] for e in self.pending() if self.issue_free[e] > self.now]
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
    run = _Run(instructions, costs, config.dma_outstanding_requests)
    run.run()
    slots = tuple(
        Slot(
            i,
            ins.op,
            ins.engine,
            run.start[i],
            run.end[i],
            token_wait_cycles=run.stalls[i][0],
            dram_wait_cycles=run.stalls[i][1],
            lane=run.lane[i],
        )
        for i, ins in enumerate(instructions)
    )
    return Timeline(slots, costs, max(run.end, default=0))
