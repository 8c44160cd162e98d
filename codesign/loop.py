"""The co-design loop: a model, data and a latency budget in; a pruned, mixed-precision binary
whose latency *measured* on the simulator meets the budget out.

    result = codesign(model, x[:1], target="edge16", calibration=x, latency_budget="0.5x")
    result.cycles, result.rounds, result.plan, result.bits, result.binary

The stages:
    measure    the dense W8A8 network on the target (`driver.latency`): the budget's reference
    score      saliency per channel of each coupling group (SOSP-H by default) and each layer's
               sensitivity per bit width (HAWQ-V3), on labelled batches
    table      per-layer cycles for every channel count and width (`LatencyTable`, disk cache)
    rounds     select under the selector's budget (`choose.BudgetProblem`: one integer
               program) -> prune, set bits, calibrate, quantize -> measure; stop when the
               measured cycles are at or under the budget and within `tolerance` of it, else
               move the selector's budget (below) and go again, at most `max_rounds` times
    finish     optional fine-tune of the pruned torch model, then the final compile; the
               binary's cycles are the measured ones and its outputs are checked bit for bit
               against the integer reference

The per-row sum of the table is only a prediction (layers overlap in time), so the selector
never trusts it alone: each row's entries are scaled by what the row added to the last measured
run per cycle of its entry, and what no row accounts for is added (`choose.Correction`). The
prediction is then exact for the last measured network (the dense one, in the first round) and
close for networks near it; the selector aims at the middle of the band under the budget. An
answer measured before is not measured again (`rounds.Search` moves the aim away from it). When
no answer is predicted under the budget, the fastest network is measured: if it is still over
the budget, `InfeasibleBudget` says so with that minimum.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.config_attr import set_module_target
from dopant.backend.presets import load_target
from dopant.backend.target import AccelConfig
from dopant.codesign.attrs import write_inputs
from dopant.codesign.budget import LatencyBudget
from dopant.codesign.choose import BudgetProblem, layer_paths
from dopant.codesign.finish import check_bit_exact, integer_top1, torch_top1
from dopant.codesign.latency_table import LatencyTable
from dopant.codesign.mirror import prune_module
from dopant.codesign.result import CodesignResult
from dopant.codesign.rounds import Candidate, Job, Search, run_rounds
from dopant.codesign.scores import METHODS, group_saliency
from dopant.codesign.sensitivity import METHODS as SENSITIVITIES
from dopant.codesign.sensitivity import Sensitivity, bit_sensitivity
from dopant.compiler.driver import compile_module, latency, quantize_network
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.frontend import import_model
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes._prune_channels.plan import PLAN_ATTR, PruningPlan
from dopant.passes.set_bits import check_bits, set_layer_bits
from dopant.support.errors import DopantError, InputError

Batches = Iterable[tuple[Tensor, Tensor]]
PSEUDO_LABEL_BATCH = 64
# Hutchinson probes of the sensitivity's Gauss-Newton traces: its seed-to-seed spread on
# ResNet-20 was 2.6 % at 16 probes (codesign.sensitivity), and the widths are chosen between
# costs that differ by factors of ~16 per 2 bits, so half of that is plenty and halves the time.
SENSITIVITY_PROBES = 8
BIT_EXACT_IMAGES = 16  # calibration images the final binary is checked on, bit for bit


class BudgetNotMet(InputError):
    """No answer measured under the budget; `minimum_cycles` is the fastest one measured."""

    def __init__(self, message: str, minimum_cycles: int) -> None:
        super().__init__(message)
        self.minimum_cycles = minimum_cycles


class InfeasibleBudget(BudgetNotMet):
    """The budget is below the fastest network the choices allow; `minimum_cycles` is that
    network's measured latency."""


def codesign(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    target: str | AccelConfig = "edge16",
    calibration: Any,
    latency_budget: str | int | LatencyBudget,
    prune: bool = True,
    bits: bool = True,
    finetune: Callable[[nn.Module], Any] | None = None,
    qat: Callable[[FakeQuantNetwork], Any] | None = None,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    batches: Batches | None = None,
    method: str = "sosp-h",
    sensitivity: str | Sensitivity = "hessian",
    scores: Mapping[str, np.ndarray] | None = None,
    widths: Sequence[int] = (2, 4, 8),
    step: int | None = None,
    bits_weight: float = 1.0,
    max_rounds: int = 5,
    tolerance: float = 0.02,
    quantize_method: str = "minmax",
    cache_dir: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> CodesignResult:
    """Compress `model` until its measured latency on `target` meets `latency_budget` (module
    doc for the stages); `model` itself is not changed.

    `calibration`: images (N, C, H, W) as an array or tensor, for calibration and (unless
    `batches` is given) for the saliency and sensitivity, labelled by the model's own
    predictions. `batches`: labelled (inputs, labels) batches for the saliency and sensitivity.
    `latency_budget`: "40000cycles", "80us", "2000fps", "0.5x" (of the dense W8A8 latency) or an
    int of cycles. `prune`/`bits`: which choices to make. `finetune(pruned_model)` trains the
    pruned float torch model in place before the final quantization; `qat(network)` then trains
    the quantized network's fake-quant model (`compiler.fakequant.FakeQuantNetwork`, LSQ) in
    place, and its export is the final integer network. `eval_data` = (images,
    labels) gives `result.accuracy`. `method`: the saliency (codesign.scores); `sensitivity`:
    "hessian", "loss" or "output" (codesign.sensitivity); `scores` and a `Sensitivity` given for
    `sensitivity` are used as they are (a run's `result.scores` and `result.sensitivity`, to
    try other budgets without scoring again); `widths`: the bit widths offered; `step`: the
    channel granularity (default the array width); `bits_weight` weighs the sensitivity against
    the saliency. Stops after `max_rounds` rounds; `tolerance` is how far under the budget the
    measured latency may land.

    InputError before any work for bad options; InfeasibleBudget when even the smallest network
    is over the budget; `result.converged` is False (with `result.message` saying why) when the
    rounds ran out with an answer under the budget but not within `tolerance` of it.
    """
    goal = LatencyBudget.parse(latency_budget)
    _check_options(prune, bits, method, sensitivity, widths, max_rounds, tolerance, step)
    config = target if isinstance(target, AccelConfig) else load_target(target)
    images = _images(calibration)
    job = Job(model, example_inputs, config, calibration, quantize_method, log or (lambda _: None))

    imported = import_model(model, example_inputs)
    dense = quantize_network(imported, calibration, method=quantize_method)
    dense_stats = latency(dense, config)
    budget_cycles = goal.cycles(config, dense_stats.total_cycles)
    job.say(
        f"dense W8A8: {dense_stats.total_cycles:,} cycles on {config.name}; budget {goal} = "
        f"{budget_cycles:,} cycles"
    )
    job.lap("measure")

    groups = coupling_groups(imported)
    need_data = (prune and scores is None) or (bits and isinstance(sensitivity, str))
    labelled = _labelled(model, images, batches) if need_data else []
    if prune and scores is None:
        scores = group_saliency(model, groups, labelled, method, progress=progress)
    sens = sensitivity if isinstance(sensitivity, Sensitivity) else None
    if bits and sens is None:
        layers = layer_paths(imported)
        sens = bit_sensitivity(
            model,
            layers,
            labelled,
            tuple(widths),
            str(sensitivity),
            probes=SENSITIVITY_PROBES,
            progress=progress,
        )
    scores = dict(scores) if prune and scores is not None else None
    sens = sens if bits else None
    job.lap("score")
    table = LatencyTable.of(imported, config, step=step, cache_dir=cache_dir, progress=progress)
    problem = BudgetProblem(
        imported,
        groups,
        table,
        scores=scores,
        sensitivity=sens,
        widths=widths,
        bits_weight=bits_weight,
    )
    job.lap("table")

    search = Search(budget_cycles, tolerance)
    best, rounds = run_rounds(job, imported, problem, search, dense_stats, max_rounds)
    job.lap("rounds")
    if best is None:
        closest = min(r.measured_cycles for r in rounds)
        raise BudgetNotMet(
            f"none of {len(rounds)} round(s) measured under the budget {goal} ({budget_cycles:,} "
            f"cycles on {config.name}); the closest measured {closest:,}. Allow more rounds "
            "(max_rounds) or a finer step.",
            closest,
        )
    if best.measured > budget_cycles:  # only the fastest network was measured, and it is over
        raise InfeasibleBudget(
            f"the budget {goal} ({budget_cycles:,} cycles on {config.name}) is below the fastest "
            f"network these choices allow, which measures {best.measured:,} cycles "
            f"({best.measured / dense_stats.total_cycles:.1%} of the dense W8A8 "
            f"{dense_stats.total_cycles:,}); raise the budget"
            + ("." if bits and prune else ", or allow both pruning and bits."),
            best.measured,
        )
    converged = search.done(best.measured)
    message = (
        f"{best.measured:,} cycles: {best.measured / budget_cycles:.1%} of the budget"
        if converged
        else f"the rounds ran out: the best answer measures {best.measured:,} cycles, "
        f"{1 - best.measured / budget_cycles:.1%} under the budget (more than {tolerance:.0%}); "
        "give more rounds or a finer step"
    )
    selected = imported.clone()
    write_inputs(
        selected,
        scores=scores,
        sensitivity=sens,
        budget_cycles=round(best.round.selector_budget_cycles),
        scale=best.round.scale,
        step=table.step,
        widths=tuple(widths),
        bits_weight=bits_weight,
    )
    set_module_target(selected, config)
    if prune:  # no groups in it: every channel kept
        selected.attributes[PLAN_ATTR] = (best.selection.plan or PruningPlan(())).to_attr()
    set_layer_bits(selected, best.selection.bits_entries())
    result = CodesignResult(
        config,
        goal,
        budget_cycles,
        dense_stats,
        best.selection.plan,
        best.selection.bits,
        rounds,
        compile_module(best.quantized, target=config),  # replaced after a fine-tune
        model,
        converged,
        message,
        {"imported": imported, "selected": selected, "pruned": best.pruned},
        {},
        job.seconds,
        scores,
        sens,
    )
    _finish(job, result, best, dense, (finetune, qat), eval_data, images)
    return result


def _finish(
    job: Job,
    result: CodesignResult,
    best: Candidate,
    dense: ModuleOp,
    tuning: tuple[Callable[[nn.Module], Any] | None, Callable[[FakeQuantNetwork], Any] | None],
    eval_data: tuple[np.ndarray, np.ndarray] | None,
    images: np.ndarray,
) -> None:
    """The pruned torch model (fine-tuned if asked), the final compile and its checks, and the
    accuracies, into `result`."""
    pruned_model = copy.deepcopy(job.model)
    if best.selection.plan is not None:
        prune_module(pruned_model, best.selection.plan, example_inputs=job.example_inputs)
    result.model = pruned_model
    accuracy = result.accuracy
    if eval_data is not None:
        accuracy["float"] = torch_top1(job.model, eval_data)
        accuracy["W8A8 dense"] = integer_top1(dense, eval_data)
        accuracy["float pruned"] = torch_top1(pruned_model, eval_data)
    finetune, qat = tuning
    quantized = best.quantized
    if finetune is not None:
        finetune(pruned_model)
        refreshed = import_model(pruned_model, job.example_inputs)
        set_layer_bits(refreshed, best.selection.bits_entries())
        result.stages["pruned"] = refreshed
        quantized = job.quantized(refreshed)
        if eval_data is not None:
            accuracy["float fine-tuned"] = torch_top1(pruned_model, eval_data)
    if qat is not None:
        if eval_data is not None:
            accuracy["integer before QAT"] = integer_top1(quantized, eval_data)
        network = FakeQuantNetwork(quantized)
        qat(network)
        quantized = network.export()
    if finetune is not None or qat is not None:
        result.compiled = compile_module(quantized, target=job.config)
    job.lap("finetune")
    if result.cycles != best.measured:
        raise DopantError(
            f"the final binary takes {result.cycles:,} cycles but its round measured "
            f"{best.measured:,}; the latency oracle and the compiler disagree (a bug in dopant: "
            "please report it with this model)."
        )
    check_bit_exact(result.compiled, quantized, images[:BIT_EXACT_IMAGES])
    if eval_data is not None:
        accuracy["integer"] = integer_top1(quantized, eval_data)
    result.stages.update(
        {k: v for k, v in result.compiled.stages.items() if k in ("quantized", "tiled", "accel")}
    )
    job.lap("finish")


def _check_options(
    prune: bool,
    bits: bool,
    method: str,
    sensitivity: str | Sensitivity,
    widths: Sequence[int],
    max_rounds: int,
    tolerance: float,
    step: int | None,
) -> None:
    if not (prune or bits):
        raise InputError("co-design needs something to choose: prune=True, bits=True or both.")
    if method not in METHODS:
        raise InputError(
            f"saliency method '{method}' is not known; use one of {', '.join(METHODS)}."
        )
    if isinstance(sensitivity, str) and sensitivity not in SENSITIVITIES:
        raise InputError(
            f"sensitivity '{sensitivity}' is not known; use one of {', '.join(SENSITIVITIES)}."
        )
    if not widths:
        raise InputError("widths is empty; offer at least one of 2, 4 and 8 bits.")
    for w in widths:
        check_bits("widths", w)
    if max_rounds < 1:
        raise InputError(f"max_rounds must be at least 1, got {max_rounds}.")
    if not 0 < tolerance < 1:
        raise InputError(f"tolerance is a fraction of the budget in (0, 1), got {tolerance}.")
    if step is not None and step < 1:
        raise InputError(f"step must be a positive number of channels, got {step}.")


def _images(calibration: Any) -> np.ndarray:
    """The calibration images as one float32 array (the pseudo labels and the bit-exact check
    need images, not a loader)."""
    if isinstance(calibration, Tensor):
        calibration = calibration.detach().cpu().numpy()
    if not isinstance(calibration, np.ndarray) or calibration.ndim < 2 or len(calibration) == 0:
        raise InputError(
            "co-design needs calibration images as an array or tensor of shape (N, C, H, W) "
            f"with N >= 1, got {type(calibration).__name__}."
        )
    return np.ascontiguousarray(calibration, dtype=np.float32)


def _labelled(
    model: nn.Module, images: np.ndarray, batches: Batches | None
) -> list[tuple[Tensor, Tensor]]:
    """`batches`, or the calibration images in batches labelled by the model's own top-1
    prediction."""
    if batches is not None:
        return list(batches)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), PSEUDO_LABEL_BATCH):
            x = torch.from_numpy(images[start : start + PSEUDO_LABEL_BATCH])
            out.append((x, model.eval()(x).argmax(dim=1)))
    return out
