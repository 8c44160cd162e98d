"""The co-design loop's rounds: select under the budget with the table corrected by the last
measured network, apply the answer (prune, set bits, calibrate, quantize), measure it with the
timing model, until an answer lands in the band under the budget (`codesign.loop`'s docstring)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.target import AccelConfig
from dopant.codesign.choose import BudgetProblem, Correction, Selection
from dopant.codesign.milp import Infeasible
from dopant.codesign.result import Round
from dopant.compiler.driver import latency, quantize_network
from dopant.passes.prune_channels import prune as prune_ir
from dopant.passes.set_bits import set_layer_bits
from dopant.runtime.stats import RunStats

RETRIES = 8  # times the selector is asked again when it repeats an answer measured before
# Decisions a later round may change from the last measured answer: few enough that the
# correction measured on it still predicts well (a whole re-solve moved 1-8 %, measured on
# ResNet-8), enough to cross the band.
TRUST_REGION = 1
# Where in the band under the budget the selector aims, as shares of the tolerance below the
# budget: predicted between 85 % and 30 % of the tolerance under it (98.3 %-99.4 % of the
# budget at 2 %), leaving room for the prediction's error on either side.
AIM = (0.85, 0.3)


@dataclass
class Job:
    """What every stage of one run shares: the model, the machine, how to quantize, the log and
    the wall time per stage."""

    model: nn.Module
    example_inputs: Tensor | Sequence[Tensor]
    config: AccelConfig
    calibration: Any
    quantize_method: str
    say: Callable[[str], None]
    seconds: dict[str, float] = field(default_factory=dict)
    clock: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self.clock
        self.clock = now

    def quantized(self, pruned: ModuleOp) -> ModuleOp:
        return quantize_network(pruned, self.calibration, method=self.quantize_method)


@dataclass(frozen=True)
class Candidate:
    """One round's answer, applied and measured."""

    selection: Selection
    pruned: ModuleOp
    quantized: ModuleOp
    round: Round

    @property
    def measured(self) -> int:
        return self.round.measured_cycles


def run_rounds(
    job: Job,
    imported: ModuleOp,
    problem: BudgetProblem,
    search: Search,
    dense: RunStats,
    max_rounds: int,
) -> tuple[Candidate | None, list[Round]]:
    """Select, apply and measure until an answer lands in the band under the budget (module
    doc); the answer (else the most valuable one under the budget; else, when only the fastest
    network was left, that one) and every round. `dense` is the dense W8A8 network's run, the
    first correction of the table."""
    rounds: list[Round] = []
    best: Candidate | None = None
    correction = Correction.measured(dense.total_cycles, problem.dense_row_cycles())
    near: Selection | None = None
    while len(rounds) < max_rounds:
        selector, selection = search.select(problem, correction, near)
        pruned = apply_selection(imported, selection)
        quantized = job.quantized(pruned)
        measured = latency(quantized, job.config).total_cycles
        rounds.append(_round(len(rounds) + 1, selector, correction, selection, measured))
        job.say(_round_line(rounds[-1], search.budget))
        candidate = Candidate(selection, pruned, quantized, rounds[-1])
        if search.done(measured):
            return candidate, rounds
        if measured <= search.budget and (best is None or selection.value > best.selection.value):
            best = candidate
        if measured > search.budget and search.at_minimum:
            return best or candidate, rounds  # over the budget at the minimum: infeasible
        search.seen[_key(selection)] = measured
        correction = Correction.measured(measured, selection.row_cycles)
        near = selection
    return best, rounds


class Search:
    """Where the selector aims each round (module doc of `codesign.loop`): the middle of the
    band under the budget, predicted under the correction from the last measured network; an
    answer measured before is not measured again: the aim moves away from it (down if it was
    over the budget, up if under) by half the band at a time, and the selector is asked again."""

    def __init__(self, budget_cycles: int, tolerance: float) -> None:
        self.budget = budget_cycles
        self.tolerance = tolerance
        self.seen: dict[tuple[object, ...], int] = {}  # answer -> its measured cycles
        self.at_minimum = False

    def done(self, measured: int) -> bool:
        return (1 - self.tolerance) * self.budget <= measured <= self.budget

    def select(
        self, problem: BudgetProblem, correction: Correction, near: Selection | None
    ) -> tuple[float, Selection]:
        """(the selector's budget, its answer) for the next round: the most valuable answer
        predicted inside the AIM window under the budget that was not measured before. The
        first round chooses freely; a later one changes at most TRUST_REGION decisions of the
        last measured answer `near` (whose measurement the `correction` comes from), widening
        the region until it finds one. Without any, the most valuable new answer under the
        window's top; without that, the aim moves away from the answers measured before (down
        from one over the budget, up from one under it)."""
        low, high = (self.budget * (1 - self.tolerance * share) for share in AIM)
        for floor in (low, None):
            for changes in _regions(near, len(problem.choices)):
                try:
                    selection = problem.solve(high, correction, near, changes, floor)
                except Infeasible:
                    continue
                if _key(selection) not in self.seen:
                    return high, selection
        step = self.budget * self.tolerance / 2
        aim = high
        for _ in range(RETRIES):
            try:
                selection = problem.solve(aim, correction)
            except Infeasible:  # below the fastest predicted network: measure that one
                self.at_minimum = True
                selection = problem.smallest(correction)
                return float(selection.predicted_cycles), selection
            before = self.seen.get(_key(selection))
            if before is None:
                return aim, selection
            aim += step if before < self.budget else -step
        return aim, selection


def _regions(near: Selection | None, choices: int) -> list[int | None]:
    """The trust regions to try, narrow first (None: no region, the first round)."""
    if near is None:
        return [None]
    sizes: list[int | None] = []
    size = TRUST_REGION
    while size < choices:
        sizes.append(size)
        size *= 2
    return [*sizes, None]


def apply_selection(imported: ModuleOp, selection: Selection) -> ModuleOp:
    """The float network with the selection applied: pruned, bit widths as attributes."""
    pruned = imported.clone()
    if selection.plan is not None:
        prune_ir(pruned, selection.plan)
    set_layer_bits(pruned, selection.bits_entries())
    return pruned


def _key(selection: Selection) -> tuple[object, ...]:
    return (tuple(sorted(selection.kept.items())), tuple(sorted(selection.bits.items())))


def _round(
    index: int, selector: float, correction: Correction, selection: Selection, measured: int
) -> Round:
    return Round(
        index,
        selector,
        correction.scale,
        selection.predicted_cycles,
        measured,
        dict(selection.kept),
        dict(selection.bits),
        selection.value,
    )


def _round_line(r: Round, budget_cycles: int) -> str:
    return (
        f"round {r.index}: selector budget {r.selector_budget_cycles:,.0f}, predicted "
        f"{r.predicted_cycles:,}, measured {r.measured_cycles:,} "
        f"({r.measured_cycles / budget_cycles:.1%} of the budget)"
    )
