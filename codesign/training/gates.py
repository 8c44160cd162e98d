"""Soft channel gates on a torch model, trained with it, that become a pruning plan.

    gates = ChannelGates(model, lut)          # hooks on the model; one logit per channel
    e = lut.expected_cycles(kept=gates.expected_kept())
    ...train model and gates together...
    plan = gates.plan()                        # the kept channels per group
    gates.remove()

A gate g = sigmoid(logit / temperature) multiplies the output channels of one channel of a
prunable coupling group at every gate member of the group (the batch norm after a producing
layer, else the layer: `_saliency.gates`), so g = 0 is that channel pruned and g = 1 the model
unchanged. Logits start at `init_logit` (all gates near 1). A group's expected kept count is the
sum of its gates. `plan()` keeps, per group, the grid count (the LUT's options) nearest to that
sum, the channels with the largest gates first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dopant.codesign._saliency.gates import gate_lookups
from dopant.codesign.scores import group_modules
from dopant.codesign.training.hooks import Hooked, parameter_key
from dopant.codesign.training.lut import LatencyLUT
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.support.errors import InputError

INIT_LOGIT = 3.0  # sigmoid(3) = 0.95: every channel on, with a gradient to move


class ChannelGates(Hooked):
    """One learnable logit per channel of every prunable group of `lut` with more than one
    grid count, applied to `model` by forward hooks from construction until `remove()` (or
    the end of a `with` block). `logits[key]` is a group's vector, `key` the group id with `_`
    for other characters; `ids` maps keys back to group ids."""

    def __init__(
        self,
        model: nn.Module,
        lut: LatencyLUT,
        *,
        init_logit: float = INIT_LOGIT,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise InputError(f"the gates' temperature must be positive, got {temperature}.")
        self.lut = lut
        self.temperature = temperature
        groups = [g for g in lut.groups.values() if len(lut.decisions[f"group:{g.id}"]) > 1]
        self.ids = {_key(g.id): g.id for g in groups}
        floats = [p for p in model.parameters() if p.is_floating_point()]
        dtype = floats[0].dtype if floats else torch.get_default_dtype()
        self.logits = nn.ParameterDict(
            {
                _key(g.id): nn.Parameter(torch.full((g.size,), init_logit, dtype=dtype))
                for g in groups
            }
        )
        self._lookups = gate_lookups(groups, group_modules(model, groups))
        self._handles.extend(
            module.register_forward_hook(self._hook(lookup)) for module, lookup in self._lookups
        )

    def gates(self) -> dict[str, Tensor]:
        """Each group's gates, in [0, 1], by group id."""
        return {
            self.ids[key]: torch.sigmoid(logit / self.temperature)
            for key, logit in self.logits.items()
        }

    def expected_kept(self) -> dict[str, Tensor]:
        """Each group's expected kept count (the sum of its gates), by group id: what
        `LatencyLUT.expected_cycles(kept=...)` takes."""
        return {gid: g.sum() for gid, g in self.gates().items()}

    def keep(self) -> dict[str, list[int]]:
        """The channels each group keeps (module doc): the grid count nearest its expected
        count (the larger on a tie), the largest gates first, as sorted indices."""
        kept = {}
        with torch.no_grad():
            for gid, gate in self.gates().items():
                options = self.lut.decisions[f"group:{gid}"]
                count = float(gate.sum())
                k = min(options, key=lambda option: (abs(option - count), -option))
                order = torch.argsort(gate, descending=True, stable=True)
                kept[gid] = sorted(order[:k].tolist())
        return kept

    def kept_counts(self) -> dict[str, int]:
        """The count `keep` chooses per group."""
        return {gid: len(indices) for gid, indices in self.keep().items()}

    def plan(self) -> PruningPlan | None:
        """The pruning plan of `keep` (the groups it narrows), or None when it keeps all."""
        keep = {
            gid: indices
            for gid, indices in self.keep().items()
            if len(indices) < self.lut.groups[gid].size
        }
        return PruningPlan.make(list(self.lut.groups.values()), keep) if keep else None

    def _hook(self, lookup: Tensor) -> Callable[[nn.Module, object, Tensor], Tensor]:
        def hook(module: nn.Module, inputs: object, output: Tensor) -> Tensor:
            gates = [g.to(output.dtype) for g in self.gates().values()]
            flat = torch.cat([*gates, output.new_ones(1)])
            scale = flat[lookup.to(output.device)]
            return output * scale.reshape(1, -1, *([1] * (output.ndim - 2)))

        return hook


def _key(group_id: str) -> str:
    """A ParameterDict key for a group id (module paths hold dots)."""
    return "g_" + parameter_key(group_id)
