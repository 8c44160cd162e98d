"""The magnitude criterion: the L1 norm of every parameter a channel's removal removes.

For each member of a group: a conv's or linear layer's output channel takes its filter row and
bias entry, an input channel takes the weight slice that reads it (for a grouped conv, column
c mod (C_in/G) of the output rows of group c div (C_in/G); for a linear layer after a flatten,
all H*W feature columns), a batch norm channel takes γ and β. A parameter two members share
(a depthwise conv's filter is both its input and its output channel) counts once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch import nn

from dopant.passes._prune_channels.groups import Group, Member
from dopant.support.errors import InputError

_KINDS: dict[str, type[nn.Module]] = {
    "conv2d": nn.Conv2d,
    "linear": nn.Linear,
    "batch_norm": nn.modules.batchnorm._BatchNorm,
}


def _removed(module: nn.Module, member: Member) -> Iterator[tuple[str, list[np.ndarray]]]:
    """(parameter name, the flat indices channel i removes, for every group channel i)."""
    kind = _KINDS.get(member.op)
    if kind is None or not isinstance(module, kind):
        raise InputError(
            f"group member '{member.path}' is recorded as {member.op} but the model has a "
            f"{type(module).__name__} there."
        )
    rows = list(member.channels)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if member.dim in ("out", "channel"):
        if weight is not None:
            at = np.arange(weight.numel()).reshape(tuple(weight.shape))
            yield "weight", [at[r].reshape(-1) for r in rows]
        if bias is not None:
            yield "bias", rows
        return
    assert weight is not None
    at = np.arange(weight.numel()).reshape(tuple(weight.shape))
    if isinstance(module, nn.Linear):
        yield "weight", [at[:, r].reshape(-1) for r in rows]
        return
    assert isinstance(module, nn.Conv2d)
    per_group = weight.shape[1]  # input channels each filter reads
    outputs = weight.shape[0] // module.groups

    def reads(c: int) -> np.ndarray:
        first = (c // per_group) * outputs
        return at[first : first + outputs, c % per_group].reshape(-1)

    yield "weight", [np.concatenate([reads(int(c)) for c in r]) for r in rows]


def magnitude(groups: Sequence[Group], modules: dict[str, nn.Module]) -> dict[str, np.ndarray]:
    """Σ |p| over the parameters each channel of each group removes, in float64."""
    scores = {}
    for group in groups:
        removed: dict[tuple[str, str], list[list[np.ndarray]]] = {}
        for member in group.members:
            for name, per_channel in _removed(modules[member.path], member):
                picks = removed.setdefault((member.path, name), [[] for _ in range(group.size)])
                for i, flat in enumerate(per_channel):
                    picks[i].append(np.asarray(flat, dtype=np.int64).reshape(-1))
        score = np.zeros(group.size)
        for (path, name), picks in removed.items():
            values = getattr(modules[path], name).detach().cpu().double().abs().numpy().ravel()
            score += [values[np.unique(np.concatenate(p))].sum() for p in picks]
        scores[group.id] = score
    return scores
