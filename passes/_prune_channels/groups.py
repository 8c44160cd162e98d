"""Coupling groups: the channels of a network that must be removed together.

A *group* is a set of layer dimensions that share channels: a conv's output channels and every
consumer's input channels, both operands of a residual add (so a ResNet stage is one group), a
depthwise conv's input and output, the per-channel features a flatten hands to a linear layer.
Channel *i* of a group is one structure: removing it removes, in every member, the channels
listed in row *i* of that member's `channels`.

The analysis runs on float or quantized `qnn` IR (before or after `fold-batchnorm` and
`quantize`); `coupling_groups(module)` returns the groups in program order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Dim = Literal["out", "in", "channel"]


@dataclass(frozen=True, eq=False)
class Member:
    """One layer dimension of a group.

    `path` is the layer's torch module path, `op` its kind ("conv2d", "linear", "batch_norm"),
    `dim` which dimension ("out": output channels, "in": input channels or features of the
    layer's input tensor, "channel": a batch norm's channels). `channels[i]` lists the indices in
    that dimension that belong to group channel i: one index usually, H*W features of a linear
    layer after a flatten, a depthwise conv's multiplier outputs, one index per group of a
    grouped conv's input.
    """

    path: str
    op: str
    dim: Dim
    channels: np.ndarray

    @property
    def offset(self) -> int:
        """The first index of this member that the group covers (concat puts groups side by side)."""
        return int(self.channels.min())

    @property
    def per_channel(self) -> int:
        """How many indices of this dimension one group channel spans."""
        return int(self.channels.shape[1])


@dataclass(frozen=True, eq=False)
class Group:
    """Channels that are pruned together, with what one of them costs.

    `id` is the module path of the group's first producing layer in program order ("input"
    for the network's input channels), stable across `fold-batchnorm` and `quantize`.
    `gates` are the members whose output a channel gate scales for saliency: for each producing
    layer, the batch norm right after it if there is one, else the layer itself.
    `macs_per_channel` and `params_per_channel` are what the network loses when one channel of
    the full-width group goes (exact for that single channel; pruning several channels of a
    group whose member layers have both their input and output in it saves more per channel).
    """

    id: str
    size: int
    members: tuple[Member, ...]
    gates: tuple[Member, ...]
    prunable: bool
    reason: str
    macs_per_channel: int
    params_per_channel: int

    def member(self, path: str, dim: Dim) -> Member | None:
        return next((m for m in self.members if m.path == path and m.dim == dim), None)
