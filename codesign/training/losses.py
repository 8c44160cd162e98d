"""Loss terms from the expected latency (METHODS.md, "Latency inside training").

    objective = LatencyLoss(lut, budget_cycles=20_000, gates=gates, bits=bits, weight=2.0)
    loss = objective(F.cross_entropy(model(x), y))

`budget_penalty`: weight * relu(E[cycles] / budget - 1), zero once the expected latency is under
the budget (a hinge, as HALP's and NetAdapt's constraints are met rather than minimized).
`fbnet_loss`: FBNet's multiplicative form, task_loss * alpha * (log E[cycles] / log reference)^beta
(Wu et al., CVPR 2019, eq. 6, with the latency normalized by a reference so alpha keeps its
scale across networks). `LatencyLoss` holds the LUT and the soft choices and adds either to a
task loss, keeping the last values for logging (NNCF's controller objects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dopant.codesign.training.bits import BitChoices
from dopant.codesign.training.gates import ChannelGates
from dopant.codesign.training.lut import LatencyLUT
from dopant.support.errors import InputError

FORMS = ("penalty", "fbnet")
# FBNet's defaults (Wu et al. 2019, section 4.1: alpha = 0.2, beta = 0.6).
FBNET_ALPHA, FBNET_BETA = 0.2, 0.6


def budget_penalty(expected_cycles: Tensor, budget_cycles: float, weight: float = 1.0) -> Tensor:
    """weight * relu(expected / budget - 1): the hinge on the budget."""
    if budget_cycles <= 0:
        raise InputError(f"the latency budget must be positive cycles, got {budget_cycles}.")
    return weight * torch.relu(expected_cycles / budget_cycles - 1)


def fbnet_loss(
    task_loss: Tensor,
    expected_cycles: Tensor,
    reference_cycles: float,
    alpha: float = FBNET_ALPHA,
    beta: float = FBNET_BETA,
) -> Tensor:
    """task_loss * alpha * (log expected / log reference)^beta (module doc)."""
    if reference_cycles <= 1:
        raise InputError(f"the reference latency must exceed 1 cycle, got {reference_cycles}.")
    ratio = torch.log(expected_cycles) / math.log(reference_cycles)
    return task_loss * (alpha * ratio.clamp_min(0) ** beta).to(task_loss.dtype)


@dataclass
class LatencyLoss:
    """The task loss plus a latency term of the expected cycles of `gates` and `bits` under
    `lut` (either may be None: those decisions stay dense). `form` "penalty" adds
    `budget_penalty(E, budget_cycles, weight)`; "fbnet" returns `fbnet_loss(task, E,
    budget_cycles, alpha, beta)`. After each call `last` holds the expected cycles, the latency
    term and the total (floats)."""

    lut: LatencyLUT
    budget_cycles: float
    gates: ChannelGates | None = None
    bits: BitChoices | None = None
    weight: float = 1.0
    form: str = "penalty"
    alpha: float = FBNET_ALPHA
    beta: float = FBNET_BETA
    last: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise InputError(f"latency loss form '{self.form}' is not known; use one of {FORMS}.")
        if self.budget_cycles <= 0:
            raise InputError(f"the latency budget must be positive, got {self.budget_cycles}.")

    def expected_cycles(self) -> Tensor:
        """E[cycles] of the current soft choices (simulator cycles, `LatencyLUT.scale`)."""
        kept = self.gates.expected_kept() if self.gates is not None else None
        probs = self.bits.probabilities() if self.bits is not None else None
        return self.lut.expected_cycles(kept=kept, probs=probs)

    def __call__(self, task_loss: Tensor) -> Tensor:
        expected = self.expected_cycles()
        if self.form == "penalty":
            term = budget_penalty(expected, self.budget_cycles, self.weight)
            total = task_loss + term.to(task_loss.dtype)
        else:
            total = fbnet_loss(task_loss, expected, self.budget_cycles, self.alpha, self.beta)
            term = total - task_loss
        self.last = {
            "expected_cycles": float(expected.detach()),
            "latency_term": float(term.detach()),
            "loss": float(total.detach()),
        }
        return total
