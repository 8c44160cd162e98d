"""A torch model's coupling groups and channel saliency, from Python in one call each.

`model_groups(model, example_inputs)` imports the model (`compiler.frontend.import_model`, batch
norms kept) and returns its coupling groups (`passes._prune_channels.groups`): the channels that
must be removed together, with their ids, members and costs. `saliency(...)` scores every
channel of every prunable group on real data (`codesign.scores.group_saliency`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dopant.codesign.scores import group_saliency
from dopant.compiler.frontend import import_model
from dopant.passes._prune_channels.groups import Group, coupling_groups

Inputs = Tensor | Sequence[Tensor]


def model_groups(model: nn.Module, example_inputs: Inputs) -> list[Group]:
    """The coupling groups of `model` traced on `example_inputs`, in program order."""
    return coupling_groups(import_model(model, example_inputs))


def saliency(
    model: nn.Module,
    example_inputs: Inputs,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    method: str = "sosp-h",
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    hessian: str = "exact",
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """One score per channel of each prunable group of `model`, keyed by group id.

    `batches` yields (inputs, labels); `loss(logits, labels)` is the batch-mean loss
    (cross-entropy by default); `method` is magnitude, taylor, sosp-h or sosp-i and `hessian`
    exact or gauss-newton (for sosp-h): see `codesign.scores.group_saliency`, which this
    calls with the groups of `model_groups`. Scores are comparable across groups, for one
    global ranking (`codesign.select`).
    """
    groups = model_groups(model, example_inputs)
    return group_saliency(model, groups, batches, method, loss, hessian=hessian, progress=progress)
