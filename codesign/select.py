"""Global channel selection: which channels to remove so a network loses a target fraction of
its MACs or parameters, the lowest-saliency channels first.

`select_channels(groups, scores, target, layers=...)` ranks the channels of every prunable
coupling group by their raw score, one ranking across groups (scores must be comparable across
groups, as `scores.group_saliency` makes them), and removes the lowest-scored remaining
channel, one at a time, until the network's MACs (or parameters) have fallen by at least the
target fraction. After each removal the cost is recounted exactly from the layer shapes
(`passes._prune_channels.costs`), not from a per-channel figure: a group whose layers have both
their input and their output in it (a ResNet stage's convs) saves more with each channel it
loses. Every group keeps at least one channel; a target that cannot be met without emptying a
group is an InputError naming the largest reachable fraction.

Rounding (`round_to` = r > 1, e.g. the array width, so that kept widths fill whole tiles): a
group of n channels may keep any multiple of r from r to n, or all n; a group of fewer than r
channels is left whole. It then loses channels in *chunks*: from n down to the largest multiple
of r below n (n mod r channels, or r when n is a multiple), then r at a time. The chunks are its
lowest-scored channels first; across groups, the chunk with the lowest mean score goes next.
With r = 1 a chunk is one channel and the rule is the plain global ranking.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dopant.passes._prune_channels.costs import LayerShape, MemberKey, full_widths
from dopant.passes._prune_channels.groups import Group
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.support.errors import InputError

Metric = Literal["macs", "params"]
METRICS: tuple[Metric, ...] = ("macs", "params")
_METRIC_NAMES = {"macs": "MACs", "params": "parameters"}


@dataclass(frozen=True)
class Target:
    """The fraction of the network's MACs or parameters to remove, strictly between 0 and 1."""

    metric: Metric
    fraction: float

    @staticmethod
    def parse(text: str | Target) -> Target:
        """'macs=0.5' (half the MACs removed) or 'params=0.3'; a Target is returned as is."""
        if isinstance(text, Target):
            return Target.checked(text.metric, text.fraction)
        if not isinstance(text, str):
            raise InputError(
                f"pruning target {text!r} is a {type(text).__name__}, not METRIC=FRACTION text; "
                'write e.g. target="macs=0.5" (remove half the MACs).'
            )
        name, sep, value = text.partition("=")
        name = name.strip().lower()
        if not sep or name not in METRICS:
            raise InputError(
                f"pruning target '{text}' is not METRIC=FRACTION; write macs=0.5 (remove half "
                "the MACs) or params=0.3 (remove 30% of the parameters)."
            )
        try:
            fraction = float(value)
        except ValueError:
            raise InputError(
                f"pruning target '{text}': '{value}' is not a number; give the fraction to "
                "remove, e.g. macs=0.5."
            ) from None
        return Target.checked(name, fraction)  # type: ignore[arg-type]

    @staticmethod
    def checked(metric: Metric, fraction: float) -> Target:
        if metric not in METRICS:
            raise InputError(f"pruning target metric '{metric}' is not known; use macs or params.")
        if not 0.0 < fraction < 1.0 or math.isnan(fraction):
            raise InputError(
                f"pruning target {metric}={fraction} is outside (0, 1); give the fraction of "
                f"the {_METRIC_NAMES[metric]} to remove, strictly between 0 and 1 (e.g. 0.5)."
            )
        return Target(metric, fraction)

    def __str__(self) -> str:
        return f"{self.metric}={self.fraction:g}"

    @property
    def what(self) -> str:
        """'MACs' or 'parameters', for messages and tables."""
        return _METRIC_NAMES[self.metric]


def check_round_to(round_to: int) -> None:
    """InputError unless `round_to` is an integer (not a bool) of at least 1."""
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise InputError(f"round_to must be a positive integer (1: no rounding), not {round_to!r}.")


def allowed_counts(size: int, round_to: int) -> list[int]:
    """The channel counts a group of `size` may keep under `round_to`, ascending (module doc)."""
    if round_to == 1:
        return list(range(1, size + 1))
    multiples = list(range(round_to, size + 1, round_to))
    return multiples if multiples and multiples[-1] == size else [*multiples, size]


class _Cost:
    """The network's cost in one metric as groups lose channels, recounted layer by layer.

    A dimension's width is its full width less what every group removed from it: groups side
    by side in a concat share their consumer's input dimension.
    """

    def __init__(self, layers: Sequence[LayerShape], metric: Metric) -> None:
        self.layers = list(layers)
        self.column = METRICS.index(metric)
        self.widths = full_widths(self.layers)
        self.per_layer = [layer.counts(self.widths)[self.column] for layer in self.layers]
        self.full = sum(self.per_layer)
        self.now = self.full
        self.touching: dict[MemberKey, list[int]] = {}
        for i, layer in enumerate(self.layers):
            for key in layer.keys:
                self.touching.setdefault(key, []).append(i)

    def remove(self, group: Group, channels: int) -> None:
        """`group` loses `channels` more channels: narrow its members and recount their layers."""
        for member in group.members:
            self.widths[(member.path, member.dim)] -= channels * member.per_channel
        keys = [(m.path, m.dim) for m in group.members]
        for i in sorted({i for key in keys for i in self.touching.get(key, [])}):
            count = self.layers[i].counts(self.widths)[self.column]
            self.now += count - self.per_layer[i]
            self.per_layer[i] = count

    def removed(self) -> float:
        return 1.0 - self.now / self.full


def check_reachable(
    groups: Sequence[Group],
    layers: Sequence[LayerShape],
    target: Target | str,
    *,
    round_to: int = 1,
) -> Target:
    """The parsed target, or InputError (naming the largest reachable fraction) unless it is
    met with every prunable group at its smallest allowed count under `round_to`.

    Needs no scores: `prune` and `dopant prune` run it before any data is read or saliency
    computed; `select_channels` runs it too. `layers` as `select_channels` takes them.
    """
    target = Target.parse(target)
    check_round_to(round_to)
    cost = _Cost(layers, target.metric)
    if cost.full == 0:
        raise InputError(f"the network has no {target.what}; nothing can be pruned.")
    for group in groups:
        if group.prunable:
            cost.remove(group, group.size - allowed_counts(group.size, round_to)[0])
    most = cost.removed()
    if most >= target.fraction:
        return target
    floor = "one channel" if round_to == 1 else f"{round_to} channels (round_to)"
    if most <= 0:
        raise InputError(
            f"the network has no channel it can lose (no prunable group above {floor}), so "
            f"{target} cannot be met."
        )
    # What the user can ask for: `most` floored to 3 decimals, or 3 significant digits below.
    places = max(3, 2 - math.floor(math.log10(most)))
    reach = math.floor(most * 10**places) / 10**places
    raise InputError(
        f"pruning target {target} would empty a group: with every prunable group down to "
        f"{floor} the network loses at most {reach:.{places - 2}%} of its {target.what}; ask "
        f"for at most {target.metric}={reach:g}."
    )


def select_channels(
    groups: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    target: Target | str,
    *,
    round_to: int = 1,
    layers: Sequence[LayerShape],
) -> dict[str, list[int]]:
    """The kept channel indices (ascending) of every prunable group, the lowest-scored channels
    removed globally until `target` is met (module doc: the rule, and `round_to`).

    `scores[id]` holds one score per channel of each prunable group (higher: more salient);
    `layers` are the network's layer shapes (`costs.layer_shapes` of its `@forward`). Ties go
    to the group first in `groups`, then to the lower channel index. InputError for a missing,
    misshapen or non-finite score, a score for a group that is not prunable here, a target
    that is not METRIC=FRACTION text or a Target, `round_to` not a positive int, and a target
    that cannot be met without emptying a group.
    """
    target = check_reachable(groups, layers, target, round_to=round_to)
    prunable = [g for g in groups if g.prunable]
    orders = {g.id: _ascending(g, scores) for g in prunable}
    _check_extra(groups, scores)
    counts = {g.id: allowed_counts(g.size, round_to) for g in prunable}
    cost = _Cost(layers, target.metric)

    kept = {g.id: g.size for g in prunable}
    heap: list[tuple[float, int, int, int]] = []  # (chunk mean score, group, chunk, new count)
    for position, group in enumerate(prunable):
        _push_next(heap, position, group, counts[group.id], kept[group.id], orders[group.id][1])
    while cost.removed() < target.fraction:
        _, position, _, count = heapq.heappop(heap)  # never empty: the target is reachable
        group = prunable[position]
        cost.remove(group, kept[group.id] - count)
        kept[group.id] = count
        _push_next(heap, position, group, counts[group.id], count, orders[group.id][1])
    return {g.id: sorted(orders[g.id][0][g.size - kept[g.id] :].tolist()) for g in prunable}


def plan_for(
    groups: Sequence[Group],
    layers: Sequence[LayerShape],
    scores: Mapping[str, np.ndarray],
    target: Target | str,
    *,
    round_to: int = 1,
) -> PruningPlan:
    """The pruning plan that meets `target` on the network of `groups` and `layers` (its
    coupling groups and layer shapes), removing the channels `scores` rank lowest
    (`select_channels`)."""
    keep = select_channels(groups, scores, target, round_to=round_to, layers=layers)
    return PruningPlan.make(groups, keep)


def _push_next(
    heap: list[tuple[float, int, int, int]],
    position: int,
    group: Group,
    allowed: list[int],
    kept: int,
    sorted_scores: np.ndarray,
) -> None:
    """Offer `group`'s next chunk: from `kept` down to the next allowed count, if any."""
    step = allowed.index(kept)
    if step == 0:
        return
    new = allowed[step - 1]
    chunk = sorted_scores[group.size - kept : group.size - new]
    heapq.heappush(heap, (float(chunk.mean()), position, group.size - kept, new))


def _ascending(group: Group, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`group`'s channel indices by ascending score (ties: lower index first), and the scores
    in that order."""
    if group.id not in scores:
        raise InputError(
            f"no saliency scores for the prunable group '{group.id}'; the scores must come from "
            "this network (saliency of the same model)."
        )
    values = np.asarray(scores[group.id], dtype=np.float64)
    if values.shape != (group.size,):
        raise InputError(
            f"the scores of group '{group.id}' have shape {list(values.shape)}, but the group "
            f"has {group.size} channels; the scores must come from this network."
        )
    if not np.all(np.isfinite(values)):
        raise InputError(
            f"the scores of group '{group.id}' are not all finite (NaN or infinity); check the "
            "model and the data the saliency was computed on."
        )
    order = np.argsort(values, kind="stable")
    return order, values[order]


def _check_extra(groups: Sequence[Group], scores: Mapping[str, np.ndarray]) -> None:
    by_id = {g.id: g for g in groups}
    for group_id in scores:
        group = by_id.get(group_id)
        if group is None:
            raise InputError(
                f"the scores name group '{group_id}', which this network does not have; the "
                "scores must come from this network."
            )
        if not group.prunable:
            raise InputError(
                f"the scores rank group '{group_id}', which cannot be pruned ({group.reason})."
            )
