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

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import SSAValue

from dopant.dialects.qnn import BatchNormOp, Conv2DOp, LinearOp
from dopant.passes._prune_channels.costs import MemberKey, full_widths, layer_shapes, totals
from dopant.passes._prune_channels.graph import ChannelGraph, channel_graph

Dim = Literal["out", "in", "channel"]
DIMS: tuple[Dim, ...] = ("out", "in", "channel")


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
        """The first index of this member in the group (concat puts groups side by side)."""
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


@dataclass(frozen=True)
class _Site:
    """A member dimension before grouping: a layer's dimension and the activation it indexes."""

    path: str
    op: str
    dim: Dim
    value: SSAValue
    producer: bool


def _sites(g: ChannelGraph) -> list[_Site]:
    sites = []
    for op in g.fn.body.block.ops:
        if isinstance(op, Conv2DOp | LinearOp):
            kind = "conv2d" if isinstance(op, Conv2DOp) else "linear"
            sites.append(_Site(op.path.data, kind, "in", op.input, False))
            sites.append(_Site(op.path.data, kind, "out", op.output, True))
        elif isinstance(op, BatchNormOp):
            sites.append(_Site(op.path.data, "batch_norm", "channel", op.output, False))
    return sites


def _key(site: _Site) -> MemberKey:
    return (site.path, site.dim)


def _rows(units: np.ndarray, order: list[int]) -> np.ndarray:
    """channels[i] = the indices whose unit is order[i] (each unit covers as many indices);
    `order` is sorted."""
    ranked = np.asarray(order)
    indices = np.flatnonzero(np.isin(units, ranked))
    rank = np.searchsorted(ranked, units[indices])
    counts = np.bincount(rank, minlength=len(ranked))
    if counts.min() != counts.max():
        raise AssertionError("a coupling group covers member indices unevenly")
    return indices[np.argsort(rank, kind="stable")].reshape(len(ranked), -1).astype(np.int64)


def _gate(site: _Site, members: Mapping[MemberKey, Member]) -> Member:
    """The batch norm right after a producing layer, or the layer itself."""
    uses = list(site.value.uses)
    if len(uses) == 1 and isinstance(uses[0].operation, BatchNormOp):
        norm = uses[0].operation
        return members.get((norm.path.data, "channel"), members[(site.path, site.dim)])
    return members[(site.path, site.dim)]


@dataclass(frozen=True)
class Coupling:
    """The channel graph of a network, its units and its groups.

    `units[gid][i]` is the unit (see graph.py) that is channel i of group `gid`.
    """

    graph: ChannelGraph
    unit: np.ndarray
    groups: list[Group]
    units: dict[str, list[int]]

    def kept_channels(self, value: SSAValue, removed_units: set[int]) -> np.ndarray:
        """The channel indices of `value` that stay when `removed_units` go."""
        units = self.unit[self.graph.channels(value)]
        return np.flatnonzero(~np.isin(units, list(removed_units)))


def coupling_groups(module: ModuleOp) -> list[Group]:
    """The coupling groups of `module`'s `@forward`, in program order of their first member."""
    return analyze(module).groups


def analyze(module: ModuleOp) -> Coupling:
    """The channel graph of `module`'s `@forward` and the groups its units form."""
    g = channel_graph(module)
    unit = g.units()
    sites = _sites(g)
    site_units = [unit[g.channels(s.value)] for s in sites]
    signature: dict[int, list[int]] = defaultdict(list)
    for i, units in enumerate(site_units):
        for u in np.unique(units).tolist():
            signature[u].append(i)
    by_signature: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for u in sorted(signature):
        by_signature[tuple(signature[u])].append(u)
    pinned = {int(unit[node]): reason for node, reason in g.pinned.items()}
    layers = layer_shapes(g.fn)
    full = totals(layers, {})
    widths = full_widths(layers)
    groups: list[Group] = []
    group_units: dict[str, list[int]] = {}
    taken: set[str] = set()
    for site_ids, order in by_signature.items():
        members = {
            _key(sites[i]): Member(
                sites[i].path, sites[i].op, sites[i].dim, _rows(site_units[i], order)
            )
            for i in site_ids
        }
        producers = [sites[i] for i in site_ids if sites[i].producer]
        reasons = [pinned[u] for u in order if u in pinned]
        group_id = _unique(_name(producers, reasons), taken)
        draft = Group(
            group_id,
            len(order),
            tuple(members.values()),
            tuple(_gate(s, members) for s in producers),
            not reasons and bool(producers),
            reasons[0] if reasons else "" if producers else "no layer produces these channels",
            0,
            0,
        )
        macs, params = totals(layers, _narrowed(draft, widths))
        groups.append(
            replace(draft, macs_per_channel=full[0] - macs, params_per_channel=full[1] - params)
        )
        group_units[group_id] = order
    return Coupling(g, unit, groups, group_units)


def _name(producers: list[_Site], reasons: list[str]) -> str:
    if producers:
        return producers[0].path
    return "input" if any("input" in r for r in reasons) else "group"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}#{n}"
    taken.add(candidate)
    return candidate


def _narrowed(group: Group, full: Mapping[MemberKey, int]) -> dict[MemberKey, int]:
    """The widths of the layers this group touches when it loses one channel."""
    return {(m.path, m.dim): full[(m.path, m.dim)] - m.per_channel for m in group.members}
