"""`select-compression`: choose channels and bit widths under a latency budget, from text."""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from dopant.backend.config_attr import has_target, module_target
from dopant.codesign.attrs import CODESIGN_ATTR, SALIENCY_ATTR, SENSITIVITY_ATTR, read_inputs
from dopant.codesign.choose import BudgetProblem, Correction
from dopant.codesign.latency_table import LatencyTable
from dopant.compiler.driver import is_quantized
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes._prune_channels.plan import PLAN_ATTR, PruningPlan
from dopant.passes.set_bits import set_layer_bits
from dopant.support.errors import DopantError


@dataclass(frozen=True)
class SelectCompressionPass(ModulePass):
    """Choose how many channels each group keeps and each layer's bit widths under a latency
    budget, as attributes for `prune-channels` and `quantize`.

    The selection the co-design loop makes (`codesign.choose.BudgetProblem`), from the inputs
    its `selected` stage records on the module (`codesign.attrs`), so
    `dopant opt selected.mlir -p 'select-compression,prune-channels'` reproduces its choice
    without Python.
    Expects: float qnn IR carrying `qnn.target` (the machine whose latency table is used, from
    the disk cache or measured) and `qnn.saliency` (to choose channels) and/or
    `qnn.sensitivity` (to choose widths); `qnn.codesign` gives the budget, step and widths
    unless the options do. The budget is on the latency table's per-layer sum, as the loop's
    rounds give it to the selector (its `selector_budget_cycles`); the measured latency of the
    result may differ: measure it with `dopant compile`.
    Guarantees: `qnn.pruning_plan` holds the kept channels (no groups: all kept) and every
    conv/linear layer carries `#qnn.bits` (when widths are chosen); nothing else changes.
    Fails: on quantized IR, without a target or a budget, without scores for a choice asked
    for, and when no choice fits the budget (naming the smallest predicted latency).
    """

    name = "select-compression"
    latency_budget_cycles: int = 0  # 0: the budget in qnn.codesign
    channels: bool = True
    bits: bool = True
    cache_dir: str = ""  # "": the default latency-table cache

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if is_quantized(op):
            raise DopantError(
                "select-compression chooses on float IR (before quantize); give the IR the "
                "co-design loop saved as selected.mlir or any imported network."
            )
        if not has_target(op):
            raise DopantError(
                "select-compression needs the machine as the module attribute qnn.target; "
                "give IR saved by `dopant codesign`, or compile stages that carry it."
            )
        inputs = read_inputs(op)
        budget = self.latency_budget_cycles or inputs.budget_cycles
        if not budget:
            raise DopantError(
                f"select-compression needs a budget: the option latency-budget-cycles=N or "
                f"budget_cycles in the module attribute {CODESIGN_ATTR}."
            )
        _need(self.channels, inputs.scores, SALIENCY_ATTR, "channels")
        _need(self.bits, inputs.sensitivity, SENSITIVITY_ATTR, "bits")
        table = LatencyTable.of(
            op, module_target(op), step=inputs.step, cache_dir=self.cache_dir or None
        )
        problem = BudgetProblem(
            op,
            coupling_groups(op),
            table,
            scores=inputs.scores if self.channels else None,
            sensitivity=inputs.sensitivity if self.bits else None,
            widths=inputs.widths,
            bits_weight=inputs.bits_weight,
        )
        selection = problem.solve(float(budget), Correction(inputs.scale))
        if self.channels:  # no groups in it: every channel kept
            op.attributes[PLAN_ATTR] = (selection.plan or PruningPlan(())).to_attr()
        set_layer_bits(op, selection.bits_entries())


def _need(wanted: bool, found: object, attr: str, option: str) -> None:
    if wanted and found is None:
        raise DopantError(
            f"select-compression has no {attr} to choose {option} by; record it (the co-design "
            f"loop's selected.mlir has it) or turn the choice off with {option}=false."
        )
