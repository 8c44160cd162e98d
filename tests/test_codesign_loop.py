"""The co-design loop lands on a measured latency budget, and its answer is what a fresh compile
and simulation of the same IR give."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from dopant.codesign.loop import InfeasibleBudget, codesign
from dopant.codesign.result import CodesignResult
from dopant.compiler.driver import compile_module, latency, quantize_network
from dopant.compiler.evaluate import BatchedRunner
from dopant.compiler.frontend import import_model
from dopant.compiler.models import zoo
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.prune_channels import prune

CALIBRATION = 64  # shipped training images used for calibration, saliency and sensitivity
FIRST = 0.7  # the budget whose run scores the channels and widths for the others
# The widths offered: two, since three would more than triple the latency table (every
# combination of a row's weight, input and result widths is measured), which this suite cannot
# afford; 2 reaches the 30% budget at the array width's channel step, 4 does not.
# benchmarks/codesign.py runs the loop with 2, 4 and 8.
WIDTHS = (2, 8)


@functools.cache
def _images() -> np.ndarray:
    return load_sample()[0].x[:CALIBRATION]


def _model(name: str) -> torch.nn.Module:
    return load_pretrained(name) if name == "resnet8" else zoo.get(name).build()


@functools.cache
def _run(name: str, fraction: float) -> CodesignResult:
    """The loop at `fraction` of the dense latency; budgets after the first reuse its saliency
    and sensitivity (the data and the model are the same, so are they)."""
    first = _run(name, FIRST) if fraction != FIRST else None
    x = _images()
    return codesign(
        _model(name),
        torch.from_numpy(x[:1]),
        target="edge16",
        calibration=x,
        latency_budget=f"{fraction}x",
        widths=WIDTHS,
        scores=first.scores if first else None,
        sensitivity=first.sensitivity or "hessian" if first else "hessian",
    )


@pytest.mark.parametrize("name", ["resnet8", "resnet20"])
def test_the_loop_lands_within_two_percent_under_the_budget(name: str) -> None:
    """At 70, 50 and 30% of the dense latency (one test per model, so that one worker scores
    the model once and the budgets after the first reuse it); the 50% answer is then compiled
    afresh: the same binary, the same cycles, bit-exact to the integer reference."""
    for fraction in (FIRST, 0.5, 0.3):
        result = _run(name, fraction)
        budget = int(fraction * result.dense_cycles)  # by hand: a fraction rounded down
        assert result.budget_cycles == budget
        assert 0.98 * budget <= result.cycles <= budget, [r.to_dict() for r in result.rounds]
        assert result.converged and 1 <= len(result.rounds) <= 5
        assert result.rounds[-1].measured_cycles == result.cycles
    result = _run(name, 0.5)
    fresh = compile_module(result.stages["quantized"], target="edge16")
    assert fresh.binary == result.binary
    assert fresh.program.stats.total_cycles == result.cycles
    x = _images()[:8]
    simulated = fresh.run(x).outputs[0]
    assert np.array_equal(simulated, BatchedRunner(result.stages["quantized"]).run(x))


def test_an_infeasible_budget_names_the_fastest_network() -> None:
    x = _images()
    scored = _run("resnet8", FIRST)
    with pytest.raises(InfeasibleBudget) as caught:
        codesign(
            _model("resnet8"),
            torch.from_numpy(x[:1]),
            target="edge16",
            calibration=x,
            latency_budget="0.02x",
            widths=WIDTHS,
            scores=scored.scores,
            sensitivity=scored.sensitivity or "hessian",
        )
    minimum = caught.value.minimum_cycles
    message = str(caught.value)
    assert "below the fastest network these choices allow" in message
    assert f"which measures {minimum:,} cycles" in message
    assert minimum > 0.02 * scored.dense_cycles
    # An obviously fast network by hand: every prunable group down to one array width (16
    # channels on edge16), every layer at 2-bit weights and activations, measured by the
    # oracle. The loop's fastest is at least as fast (latency is not monotone in the widths:
    # it found one 1% faster) and still over the budget.
    imported = import_model(_model("resnet8"), torch.from_numpy(x[:1]))
    groups = coupling_groups(imported)
    keep = {g.id: range(min(16, g.size)) for g in groups if g.prunable and g.size > 16}
    prune(imported, PruningPlan.make(groups, keep))
    quantized = quantize_network(imported, x, weight_bits=2, act_bits=2)
    assert minimum <= latency(quantized, "edge16").total_cycles
