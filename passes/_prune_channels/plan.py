"""Pruning plans: for each coupling group, the channel indices it keeps.

A plan is JSON a person can read (keyed by group id, each group's member module paths spelled
out) or a module attribute (`qnn.pruning_plan = {conv1 = array<i64: 0, 2, 3>}`, kept indices
only: the members come from the IR). Groups a plan leaves out keep every channel.

    {"format": "dopant-pruning-plan", "version": 1,
     "groups": {"conv1": {"size": 16, "keep": [0, 2, 3],
                          "members": [{"path": "conv1", "op": "conv2d", "dim": "out",
                                       "offset": 0, "per_channel": 1, "stride": 1,
                                       "spacing": 1}, ...]}}}

Member indices are affine: channel i of the group is the member's indices
`offset + i * stride + j * spacing` for j < per_channel (a flatten gives per_channel = H*W, a
grouped conv's input one index per conv group).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.dialects.builtin import DenseArrayBase, DictionaryAttr, i64

from dopant.passes._prune_channels.groups import DIMS, Group, Member
from dopant.support.errors import InputError
from dopant.support.files import write_atomic

FORMAT = "dopant-pruning-plan"
VERSION = 1
PLAN_ATTR = "qnn.pruning_plan"
# What `indent` spreads over lines and reads better on one: a list of integers, and an object
# without nested objects or lists (a member). Module paths hold no whitespace to collapse.
_FLAT = re.compile(r"\[[\s\d,-]*\]|\{[^{}\[\]]*\}")
# A bound on a member's indices and on how many it holds, checked before a plan read from JSON
# builds its arrays (at most 128 MiB of int64): no layer dimension comes near it (a flatten of
# 2048 channels of 7x7 is 100352 features).
MAX_INDICES = 2**24


@dataclass(frozen=True)
class GroupPlan:
    """One group of a plan: its id, full size, kept channel indices (sorted) and members."""

    id: str
    size: int
    keep: tuple[int, ...]
    members: tuple[Member, ...]


@dataclass(frozen=True)
class PruningPlan:
    """Kept channels per coupling group; groups left out keep all their channels."""

    groups: tuple[GroupPlan, ...]

    @staticmethod
    def make(groups: Sequence[Group], keep: Mapping[str, Iterable[int]]) -> PruningPlan:
        """A plan keeping `keep[id]` of each named group of `groups`, checked against them."""
        by_id = {g.id: g for g in groups}
        _check_ids(keep, by_id, "the plan")
        plans = []
        for group_id, indices in keep.items():
            group = by_id[group_id]
            kept = _check_indices(group, list(indices), f"the plan's group '{group_id}'")
            plans.append(GroupPlan(group_id, group.size, kept, group.members))
        return PruningPlan(tuple(plans))

    def keep(self) -> dict[str, tuple[int, ...]]:
        return {g.id: g.keep for g in self.groups}

    def check(self, groups: Sequence[Group], source: str = "the plan") -> None:
        """InputError unless this plan fits `groups` (the network it is applied to)."""
        by_id = {g.id: g for g in groups}
        _check_ids({g.id: g.keep for g in self.groups}, by_id, source)
        for planned in self.groups:
            group = by_id[planned.id]
            where = f"{source}'s group '{planned.id}'"
            if planned.size != group.size:
                raise InputError(
                    f"{where} has {planned.size} channels but this network's has "
                    f"{group.size}; was the network already pruned, or the plan made for "
                    "another one?"
                )
            _check_members(planned, group, where)
            _check_indices(group, list(planned.keep), where)

    def to_json(self) -> str:
        """Indented JSON with each list of numbers on one line, for a person to read."""
        text = json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "groups": {
                    g.id: {
                        "size": g.size,
                        "keep": list(g.keep),
                        "members": [_member_json(m) for m in g.members],
                    }
                    for g in self.groups
                },
            },
            indent=2,
        )
        return _FLAT.sub(lambda m: " ".join(m.group(0).split()), text)

    def save(self, path: str) -> None:
        write_atomic(path, self.to_json() + "\n")

    @staticmethod
    def from_json(text: str, source: str = "the plan") -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(
                f"{source}:{error.lineno}:{error.colno}: not valid JSON ({error.msg})."
            ) from error
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(
                f"{source} is not a pruning plan: expected a JSON object with "
                f'"format": "{FORMAT}" (written by `dopant prune --plan-out`).'
            )
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise InputError(f"{source}: 'version' must be the integer {VERSION}, not {version!r}.")
        if version != VERSION:
            raise InputError(
                f"{source} is a version {version} plan; this dopant reads version {VERSION}."
            )
        groups = _field(data, "groups", dict, source)
        return PruningPlan(
            tuple(
                _group_from_json(gid, entry, f"{source}: groups.{gid}")
                for gid, entry in groups.items()
            )
        )

    @staticmethod
    def load(path: str) -> PruningPlan:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise InputError(f"cannot read the pruning plan '{path}': {error.strerror}.") from error
        except UnicodeDecodeError as error:
            raise InputError(
                f"'{path}' is not a JSON pruning plan: byte {error.start} is not UTF-8 text; "
                "give a plan.json written by `dopant prune --plan-out`."
            ) from error
        return PruningPlan.from_json(text, path)

    def to_attr(self) -> DictionaryAttr:
        """The kept indices as a module attribute (members come from the IR it annotates)."""
        return DictionaryAttr(
            {g.id: DenseArrayBase.from_list(i64, list(g.keep)) for g in self.groups}
        )

    @staticmethod
    def from_attr(attr: DictionaryAttr, groups: Sequence[Group]) -> PruningPlan:
        keep: dict[str, list[int]] = {}
        for name, value in attr.data.items():
            if not isinstance(value, DenseArrayBase):
                raise InputError(
                    f"{PLAN_ATTR} entry '{name}' must be an array<i64: ...> of kept channels."
                )
            keep[name] = [int(v) for v in value.iter_values()]
        return PruningPlan.make(groups, keep)


def _check_ids(keep: Mapping[str, object], by_id: Mapping[str, Group], source: str) -> None:
    for group_id in keep:
        if group_id not in by_id:
            known = ", ".join(g for g, group in by_id.items() if group.prunable)
            raise InputError(
                f"{source} names group '{group_id}', which this network does not have (its "
                f"prunable groups: {known}); was the plan made for another network?"
            )


def check_kept(indices: list[int], size: int, where: str) -> tuple[int, ...]:
    """The kept channel indices of a group of `size`, sorted; InputError (naming `where`) for
    none kept, one that is not an int, out of range or repeated."""
    if not indices:
        raise InputError(f"{where} keeps no channel; every group must keep at least one.")
    seen: set[int] = set()
    for index in indices:
        if not isinstance(index, int) or isinstance(index, bool):
            raise InputError(f"{where} keeps {index!r}, which is not a channel index.")
        if not 0 <= index < size:
            raise InputError(
                f"{where} keeps channel {index}, but the group has {size} channels (0..{size - 1})."
            )
        if index in seen:
            raise InputError(f"{where} keeps channel {index} twice.")
        seen.add(index)
    return tuple(sorted(seen))


def _check_indices(group: Group, indices: list[int], where: str) -> tuple[int, ...]:
    kept = check_kept(indices, group.size, where)
    if not group.prunable and len(kept) != group.size:
        raise InputError(
            f"{where} removes channels, but the group cannot be pruned ({group.reason}); "
            "leave it out of the plan."
        )
    return kept


def _check_members(planned: GroupPlan, group: Group, where: str) -> None:
    """The plan's members equal the network's, except batch norms folded away since."""
    ours = {(m.path, m.dim): m for m in group.members}
    theirs = {(m.path, m.dim): m for m in planned.members}
    for key, member in ours.items():
        if key not in theirs:
            raise InputError(
                f"{where} does not list '{key[0]}' ({key[1]}), a member of this network's "
                "group; was the plan made for another network?"
            )
        if not np.array_equal(theirs[key].channels, member.channels):
            raise InputError(
                f"{where} maps the channels of '{key[0]}' ({key[1]}) differently from this "
                "network; was the plan made for another network?"
            )
    for key, member in theirs.items():
        if key not in ours and member.op != "batch_norm":
            raise InputError(
                f"{where} lists '{key[0]}' ({key[1]}), which is not a member of this "
                "network's group; was the plan made for another network?"
            )


def _member_json(m: Member) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": m.path, "op": m.op, "dim": m.dim}
    affine = _affine(m.channels)
    if affine is None:
        return {**entry, "channels": m.channels.tolist()}
    offset, stride, spacing = affine
    return {
        **entry,
        "offset": offset,
        "per_channel": m.per_channel,
        "stride": stride,
        "spacing": spacing,
    }


def _affine(channels: np.ndarray) -> tuple[int, int, int] | None:
    """(offset, stride, spacing) with channels[i, j] = offset + i*stride + j*spacing, if so."""
    size, per = channels.shape
    offset = int(channels[0, 0])
    stride = int(channels[1, 0] - offset) if size > 1 else 1
    spacing = int(channels[0, 1] - offset) if per > 1 else 1
    rebuilt = offset + np.arange(size)[:, None] * stride + np.arange(per)[None, :] * spacing
    return (offset, stride, spacing) if np.array_equal(rebuilt, channels) else None


def _field(data: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"{where}: '{name}' must be {_kind_name(kind)}.")
    return value


def _kind_name(kind: type) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", int: "an integer", str: "a string"}
    return names[kind]


def _integer(data: Mapping[str, Any], name: str, where: str, low: int, high: int) -> int:
    """`data[name]`, an integer (not a bool) from `low` to `high`, else InputError."""
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InputError(
            f"{where}: '{name}' must be an integer from {low} to {high}, not {value!r:.40}."
        )
    return value


def _group_from_json(group_id: str, entry: Any, where: str) -> GroupPlan:
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be an object with size, keep and members.")
    size = _integer(entry, "size", where, 1, MAX_INDICES - 1)
    keep = _field(entry, "keep", list, where)
    for i, index in enumerate(keep):
        if not isinstance(index, int) or isinstance(index, bool):
            raise InputError(
                f"{where}.keep[{i}] is {index!r:.40}; a kept channel is an integer (a channel "
                "index)."
            )
    members = tuple(
        _member_from_json(m, size, f"{where}.members[{i}]")
        for i, m in enumerate(_field(entry, "members", list, where))
    )
    return GroupPlan(group_id, size, tuple(keep), members)


def _member_from_json(entry: Any, size: int, where: str) -> Member:
    """A member; every number checked (module doc: MAX_INDICES) before an array is built."""
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be an object with path, op, dim and indices.")
    path = _field(entry, "path", str, where)
    op = _field(entry, "op", str, where)
    dim = _field(entry, "dim", str, where)
    if dim not in DIMS:
        raise InputError(f"{where}: dim must be out, in or channel, not '{dim}'.")
    if "channels" in entry:
        return Member(path, op, dim, _channels(_field(entry, "channels", list, where), size, where))
    top = MAX_INDICES - 1
    offset = _integer(entry, "offset", where, 0, top)
    per = _integer(entry, "per_channel", where, 1, top)
    stride, spacing = (_integer(entry, key, where, -top, top) for key in ("stride", "spacing"))
    if size * per > top:
        raise InputError(
            f"{where} spans {size * per} indices ({size} channels of {per}); a member holds at "
            f"most {top}."
        )
    corners = [offset + i * stride + j * spacing for i in (0, size - 1) for j in (0, per - 1)]
    for index in (min(corners), max(corners)):
        if not 0 <= index <= top:
            raise InputError(
                f"{where} reaches index {index} (offset {offset}, stride {stride}, spacing "
                f"{spacing}); the indices must lie in 0..{top}."
            )
    channels = offset + np.arange(size)[:, None] * stride + np.arange(per)[None, :] * spacing
    return Member(path, op, dim, channels.astype(np.int64))


def _channels(rows: list[Any], size: int, where: str) -> np.ndarray:
    """The spelled-out indices: `size` lists of equal length of indices in 0..MAX_INDICES-1."""
    if len(rows) != size:
        raise InputError(
            f"{where}: 'channels' must hold one list per channel ({size}), not {len(rows)}."
        )
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise InputError(f"{where}.channels[{i}] is {row!r:.40}; it must be a list of indices.")
        if len(row) != len(rows[0]) or not row:
            raise InputError(
                f"{where}.channels[{i}] lists {len(row)} indices and channels[0] "
                f"{len(rows[0])}; every channel lists the same number, at least one."
            )
        for j, index in enumerate(row):
            if (
                not isinstance(index, int)
                or isinstance(index, bool)
                or not 0 <= index < MAX_INDICES
            ):
                raise InputError(
                    f"{where}.channels[{i}][{j}] is {index!r:.40}; an index is an integer from "
                    f"0 to {MAX_INDICES - 1}."
                )
    return np.array(rows, dtype=np.int64)
