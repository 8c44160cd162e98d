"""`prune-channels`: remove whole channels from a network, as a pruning plan says."""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import DictionaryAttr, ModuleOp, StringAttr
from xdsl.passes import ModulePass

from dopant.passes._prune_channels.groups import Coupling, analyze
from dopant.passes._prune_channels.plan import PLAN_ATTR, PruningPlan
from dopant.passes._prune_channels.slicing import apply_kept
from dopant.support.errors import DopantError

PRUNED_ATTR = "qnn.pruned"


def removed_units(coupling: Coupling, plan: PruningPlan) -> set[int]:
    """The units (channel-graph components) a plan removes."""
    removed: set[int] = set()
    for planned in plan.groups:
        order = coupling.units[planned.id]
        keep = set(planned.keep)
        removed.update(u for i, u in enumerate(order) if i not in keep)
    return removed


def prune(
    module: ModuleOp,
    plan: PruningPlan,
    source: str = "the plan",
    coupling: Coupling | None = None,
) -> None:
    """Apply `plan` to `module` in place (checked against the module's groups first);
    `coupling` is `analyze(module)` when the caller has it already."""
    coupling = coupling or analyze(module)
    plan.check(coupling.groups, source)
    removed = removed_units(coupling, plan)
    kept = {v: coupling.kept_channels(v, removed) for v in coupling.graph.base}
    apply_kept(coupling.graph.fn, kept)
    count = sum(g.size - len(g.keep) for g in plan.groups)
    touched = sum(1 for g in plan.groups if len(g.keep) < g.size)
    note = f"{count} channel(s) removed from {touched} group(s)"
    previous = module.attributes.get(PRUNED_ATTR)
    if isinstance(previous, StringAttr):
        note = f"{previous.data}; then {note}"
    module.attributes[PRUNED_ATTR] = StringAttr(note)


@dataclass(frozen=True)
class PruneChannelsPass(ModulePass):
    """Remove the channels a pruning plan drops from every layer they touch.

    The plan comes from `plan` (a JSON file written by `dopant prune --plan-out` or
    `PruningPlan.save`, quoted in pipeline text: `prune-channels{plan="plan.json"}`) or,
    without it, from the module attribute `qnn.pruning_plan`
    (`{group-id = array<i64: kept indices>}`), which the pass then removes.
    Expects: float or quantized `qnn` IR with constant weights (before `tile`).
    Guarantees: each coupling group keeps exactly the planned channels in every member (conv
    and linear weights and biases, batch norms, per-channel quantization parameters, depthwise
    `groups`, every activation type); channels whose effect was zero leave the outputs equal;
    the input and the logits keep their shapes; `qnn.pruned` records what was removed.
    Fails: with no plan, or a plan that does not fit the network (unknown group or member,
    an index out of range or repeated, a group emptied, a group that cannot be pruned
    touched), naming the group and what to do.
    """

    name = "prune-channels"
    plan: str = ""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.plan:
            prune(op, PruningPlan.load(self.plan), self.plan)
            return
        attr = op.attributes.get(PLAN_ATTR)
        if not isinstance(attr, DictionaryAttr):
            raise DopantError(
                'prune-channels needs a plan: give prune-channels{plan="FILE.json"} or set the '
                f"module attribute {PLAN_ATTR} = {{group = array<i64: kept channels>}}."
            )
        coupling = analyze(op)
        plan = PruningPlan.from_attr(attr, coupling.groups)
        prune(op, plan, f"the module attribute {PLAN_ATTR}", coupling)
        del op.attributes[PLAN_ATTR]
