"""Global structured pruning of a torch model to a MACs or parameters target, in one call.

    result = prune(model, example_inputs, batches, method="sosp-h", target="macs=0.5")
    result.model   # the pruned torch module (a copy): fine-tune it with your own loop
    result.ir      # the same network pruned in float qnn IR, ready to quantize and compile
    result.plan    # the kept channels per coupling group (`result.plan.save("plan.json")`)

The stages: import the model (`compiler.frontend.import_model`, batch norms kept), find its
coupling groups, score every prunable channel on `batches` (`codesign.scores`), select the
lowest-scored channels globally until the target is met (`codesign.select`), then apply the one
plan to the IR (the `prune-channels` pass) and to a deep copy of the model (`prune_module`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.codesign.mirror import prune_module
from dopant.codesign.scores import group_saliency
from dopant.codesign.select import Target, check_reachable, check_round_to, plan_for
from dopant.compiler.frontend import import_model
from dopant.dialects.qnn.base import forward
from dopant.passes._prune_channels.costs import layer_shapes, totals
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.prune_channels import prune as prune_ir


@dataclass(frozen=True)
class Costs:
    """A network's MACs and parameters per sample (what torch counts as parameters)."""

    macs: int
    params: int

    @staticmethod
    def of(module: ModuleOp) -> Costs:
        return Costs(*totals(layer_shapes(forward(module, "to count its costs")), {}))


@dataclass(frozen=True)
class PruneResult:
    """What `prune` made: the plan, the pruned IR and torch module, the scores it ranked by,
    the target, and the network's costs before and after."""

    plan: PruningPlan
    ir: ModuleOp
    model: nn.Module
    scores: dict[str, np.ndarray]
    target: Target
    before: Costs
    after: Costs

    @property
    def removed(self) -> float:
        """The fraction of the target's metric removed (at least the target's fraction)."""
        before, after = (
            (self.before.macs, self.after.macs)
            if self.target.metric == "macs"
            else (self.before.params, self.after.params)
        )
        return 1.0 - after / before


def prune(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    method: str = "sosp-h",
    target: Target | str = "macs=0.5",
    *,
    round_to: int = 1,
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    hessian: str = "exact",
    scores: Mapping[str, np.ndarray] | None = None,
    progress: bool = False,
) -> PruneResult:
    """Prune `model`'s lowest-saliency channels until `target` ("macs=0.5": half the MACs
    removed; "params=0.3") is met; `model` itself is not changed (module doc for the stages).

    `batches` yields (inputs, labels) for the saliency (`method`: magnitude, taylor, sosp-h,
    sosp-i; `loss` and `hessian` as `codesign.scores.group_saliency` takes them); `round_to`
    keeps channel counts at multiples of it where a group allows (`codesign.select`).
    InputError for a bad target or `round_to` (before any work), a target that would empty a
    group (naming the largest reachable fraction; before `batches` is read), and what the
    saliency rejects. `scores` (a result's `scores`, per group) are used as they are, without
    reading `batches`: another target from the same saliency.
    """
    goal = Target.parse(target)
    check_round_to(round_to)
    module = import_model(model, example_inputs)
    groups = coupling_groups(module)
    layers = layer_shapes(forward(module, "to prune"))
    check_reachable(groups, layers, goal, round_to=round_to)
    if scores is None:
        scores = group_saliency(
            model, groups, batches, method, loss, hessian=hessian, progress=progress
        )
    scores = dict(scores)
    plan = plan_for(groups, layers, scores, goal, round_to=round_to)
    before = Costs(*totals(layers, {}))
    prune_ir(module, plan)
    pruned = copy.deepcopy(model)
    prune_module(pruned, plan, example_inputs=example_inputs)
    return PruneResult(plan, module, pruned, scores, goal, before, Costs.of(module))
