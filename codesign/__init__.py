"""dopant.codesign: compression driven by the modeled hardware (DESIGN.md, Co-design).

Structured pruning from Python:

    from dopant.codesign import prune, prune_module, saliency, model_groups, PruningPlan

Under a latency budget measured on the machine:

    from dopant.codesign import codesign, LatencyTable
    result = codesign(model, x[:1], target="edge16", calibration=x, latency_budget="0.5x")

Stage by stage (each stage started from the last and fine-tuned as an integer network), from
the module of that name (the package keeps `progressive` for the module):

    from dopant.codesign.progressive import one_jump, progressive
    result = progressive(model, x[:1], schedule="w8a8,w4a8,w4a4", train_data=(x, y))

Across compression settings and machines, with Pareto fronts and a report:

    from dopant.codesign import sweep
    result = sweep("sweep.toml", "results/", workers=2)
    result.pareto(x="fps", y="accuracy_integer")

`prune(model, example_inputs, batches, method="sosp-h", target="macs=0.5")` prunes a torch
model globally to a target; `model_groups` lists its coupling groups, `saliency` scores their
channels, `prune_module(model, plan)` applies a plan to a torch model in place. The names are
imported on first use, so `import dopant.codesign` stays cheap (no torch, no xDSL).
"""

from __future__ import annotations

from dopant.support.lazy import lazy_exports

# name -> the module that defines it
_EXPORTS = {
    "prune": "dopant.codesign.pruning",
    "PruneResult": "dopant.codesign.pruning",
    "prune_module": "dopant.codesign.mirror",
    "saliency": "dopant.codesign.groups",
    "model_groups": "dopant.codesign.groups",
    "group_saliency": "dopant.codesign.scores",
    "Target": "dopant.codesign.select",
    "select_channels": "dopant.codesign.select",
    "PruningPlan": "dopant.passes._prune_channels.plan",
    "LatencyTable": "dopant.codesign.latency_table",
    "TableRow": "dopant.codesign.latency_table",
    "bit_sensitivity": "dopant.codesign.sensitivity",
    "Sensitivity": "dopant.codesign.sensitivity",
    "codesign": "dopant.codesign.loop",
    "InfeasibleBudget": "dopant.codesign.loop",
    "CodesignResult": "dopant.codesign.result",
    "Round": "dopant.codesign.result",
    "LatencyBudget": "dopant.codesign.budget",
    "BudgetProblem": "dopant.codesign.choose",
    "sweep": "dopant.codesign._sweep.run",
    "SweepResult": "dopant.codesign._sweep.result",
    "SweepSpec": "dopant.codesign._sweep.spec",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
