"""The torch mirror of `prune-channels`: apply a pruning plan to the user's `nn.Module`.

A plan made from the IR (`dopant prune --plan-out`, `PruningPlan.make`) names each member
layer by its torch module path, so the same plan narrows the torch model the IR came from and
the user fine-tunes the pruned network with their own training loop, then imports it again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dopant.compiler.models.modes import eval_mode
from dopant.passes._prune_channels.groups import Dim, Member
from dopant.passes._prune_channels.plan import PruningPlan, check_kept
from dopant.passes._prune_channels.slicing import conv_columns
from dopant.support.errors import InputError

# The module types the mirror slices, with the plan's op name and the dimensions it may cut.
KINDS: dict[type[nn.Module], tuple[str, tuple[Dim, ...]]] = {
    nn.Conv2d: ("conv2d", ("out", "in")),
    nn.Linear: ("linear", ("out", "in")),
    nn.BatchNorm2d: ("batch_norm", ("channel",)),
}

# The tensors and sizes `_apply` may replace.
STATE = (
    *("weight", "bias", "running_mean", "running_var"),
    *("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features"),
)


@dataclass(frozen=True)
class _Cut:
    """One module and the indices it keeps in each dimension (all of a dimension not cut)."""

    path: str
    module: nn.Module
    keep: dict[Dim, np.ndarray]


def prune_module(
    model: nn.Module,
    plan: PruningPlan,
    *,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> nn.Module:
    """Remove the channels `plan` drops from `model`'s layers, in place; returns `model`.

    Each member of each planned group names a module (`model.get_submodule(path)`) and a
    dimension: "out" (a conv's output channels, a linear layer's output features), "in" (input
    channels or features; after a flatten a group channel spans H*W features) or "channel" (a
    batch norm's). A dimension keeps every index no planned group removes; the others keep all.
    - `nn.Conv2d`: weight rows and columns, bias, `in_channels`, `out_channels`; a depthwise
      conv (one input channel per group) gets `groups` = the input channels it keeps; a grouped
      conv keeps its `groups` and drops input channel j of every group together (the plan ties
      them), so its weight keeps the columns of the kept channels of group 0.
    - `nn.BatchNorm2d`: weight, bias, running_mean, running_var, `num_features`.
    - `nn.Linear`: weight rows and columns, bias, `in_features`, `out_features`.
    Parameters become new `nn.Parameter`s (same `requires_grad`), so build the optimizer after
    pruning. Everything is checked before any module changes: a member path the model does not
    have, a module of another type (or of a type the mirror does not slice), an index out of a
    layer's range (negative ones too), an index listed twice (by one member or two groups) or
    a grouped conv cut unevenly raises `InputError` naming the module.

    The plan must list every layer whose width it changes: a plan made from IR whose batch
    norms were folded (`fold-batchnorm`) does not list them, and the torch batch norms keep
    their width. Give `example_inputs` to run the pruned model once (in eval mode, without
    gradients, batch-norm statistics untouched): if it fails, every module is put back as it
    was and `InputError` says so, instead of a shape error later in the training loop.
    """
    cuts = _cuts(model, plan)
    before = [_state(cut.module) for cut in cuts]
    for cut in cuts:
        _apply(cut)
    if example_inputs is None:
        return model
    try:
        _check_forward(model, example_inputs)
    except Exception as error:  # whatever the user's forward raises: put the model back
        for cut, state in zip(cuts, before, strict=True):
            for name, value in state.items():
                setattr(cut.module, name, value)
        raise InputError(
            f"the pruned model fails on the example inputs ({type(error).__name__}: {error}), "
            "so the model was left unpruned: a layer whose width the plan changes is missing "
            "from the plan (a plan made from IR with folded batch norms does not list them: "
            "make the plan before fold-batchnorm), or the forward depends on a width."
        ) from error
    return model


def _cuts(model: nn.Module, plan: PruningPlan) -> list[_Cut]:
    """For each member module, the indices each dimension keeps (checked against the model)."""
    removed: dict[str, dict[Dim, set[int]]] = defaultdict(lambda: defaultdict(set))
    modules: dict[str, nn.Module] = {}
    owners: dict[tuple[str, Dim], dict[int, str]] = defaultdict(dict)
    for group in plan.groups:
        gone = _removed_rows(group.id, group.size, group.keep)
        for member in group.members:
            where = f"the plan's group '{group.id}' member '{member.path}' ({member.dim})"
            module = modules.setdefault(member.path, _module(model, member.path, where))
            op, dims = _kind(module, member.path, where)
            if member.op != op or member.dim not in dims:
                raise InputError(
                    f"{where} is a {member.op} {member.dim} dimension, but the model's "
                    f"'{member.path}' is a {type(module).__name__}; was the plan made for "
                    "another network?"
                )
            if member.channels.shape[0] != group.size:
                raise InputError(
                    f"{where} lists {member.channels.shape[0]} rows, not one per channel."
                )
            _check_channels(member, _width(module, member.dim), where)
            _claim(owners[(member.path, member.dim)], member, group.id, where)
            removed[member.path][member.dim].update(member.channels[gone].ravel().tolist())
    cuts = []
    for path, cut_dims in removed.items():
        module = modules[path]
        keep = {dim: np.arange(_width(module, dim)) for dim in _kind(module, path, path)[1]}
        for dim, indices in cut_dims.items():
            keep[dim] = np.setdiff1d(np.arange(_width(module, dim)), sorted(indices))
        cut = _Cut(path, module, keep)
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            _check_groups(cut, module)
        cuts.append(cut)
    return cuts


def _check_channels(member: Member, width: int, where: str) -> None:
    """InputError unless `member`'s indices lie in [0, width), each once."""
    flat = member.channels.ravel()
    outside = flat[(flat < 0) | (flat >= width)]
    if outside.size:
        raise InputError(
            f"{where} lists index {int(outside[0])}, outside the {width} of '{member.path}' "
            f"(0..{width - 1}); was the plan made for another network?"
        )
    values, counts = np.unique(flat, return_counts=True)
    if np.any(counts > 1):
        raise InputError(
            f"{where} lists index {int(values[counts > 1][0])} of '{member.path}' twice; a "
            "layer index belongs to one group channel."
        )


def _claim(owner: dict[int, str], member: Member, group_id: str, where: str) -> None:
    """Record that `group_id` owns `member`'s indices; InputError if another group does."""
    for index in member.channels.ravel().tolist():
        other = owner.setdefault(index, group_id)
        if other != group_id:
            raise InputError(
                f"{where} lists index {index} of '{member.path}' ({member.dim}), which group "
                f"'{other}' lists too; a layer index belongs to one group."
            )


def _removed_rows(group_id: str, size: int, keep: Sequence[int]) -> np.ndarray:
    kept = check_kept(list(keep), size, f"the plan's group '{group_id}'")
    return np.setdiff1d(np.arange(size), kept)


def _module(model: nn.Module, path: str, where: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as error:
        raise InputError(
            f"{where} names the module '{path}', which the model does not have ({error}); was "
            "the plan made for another network, or the model's modules renamed?"
        ) from error


def _kind(module: nn.Module, path: str, where: str) -> tuple[str, tuple[Dim, ...]]:
    for kind, entry in KINDS.items():
        if isinstance(module, kind):
            return entry
    kinds = ", ".join(k.__name__ for k in KINDS)
    raise InputError(
        f"{where}: the model's '{path}' is a {type(module).__name__}, which prune_module "
        f"cannot slice (it slices {kinds}); replace it by one of those or leave its group "
        "out of the plan."
    )


def _width(module: nn.Module, dim: Dim) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels if dim == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if dim == "out" else module.in_features
    assert isinstance(module, nn.BatchNorm2d)
    return module.num_features


def _check_groups(cut: _Cut, conv: nn.Conv2d) -> None:
    """Depthwise: outputs g*m..g*m+m-1 go with input g; grouped: the same cut in every group."""
    groups, per_in = conv.groups, conv.in_channels // conv.groups
    per_out = conv.out_channels // groups
    keep_in, keep_out = cut.keep["in"], cut.keep["out"]
    if per_in == 1:
        want_out = (keep_in[:, None] * per_out + np.arange(per_out)).ravel()
        fits = np.array_equal(keep_out, want_out)
    else:
        columns, rows = keep_in[keep_in < per_in], keep_out[keep_out < per_out]
        fits = np.array_equal(
            keep_in, (np.arange(groups)[:, None] * per_in + columns).ravel()
        ) and np.array_equal(keep_out, (np.arange(groups)[:, None] * per_out + rows).ravel())
    if not fits:
        raise InputError(
            f"the plan cuts the grouped conv '{cut.path}' ({groups} groups) differently in "
            "its groups or apart from its input; was the plan made for another network?"
        )


def _state(module: nn.Module) -> dict[str, object]:
    """What `_apply` replaces, to put back if the pruned model fails its forward check."""
    return {name: getattr(module, name) for name in STATE if hasattr(module, name)}


def _apply(cut: _Cut) -> None:
    module, keep = cut.module, cut.keep
    if isinstance(module, nn.BatchNorm2d):
        rows = keep["channel"]
        for name in ("weight", "bias", "running_mean", "running_var"):
            _take(module, name, rows, None)
        module.num_features = len(rows)
        return
    columns = keep["in"]
    if isinstance(module, nn.Conv2d):
        per_in = module.in_channels // module.groups
        columns, module.groups = conv_columns(module.groups, per_in, keep["in"])
    _take(module, "weight", keep["out"], columns)
    _take(module, "bias", keep["out"], None)
    if isinstance(module, nn.Conv2d):
        module.in_channels, module.out_channels = len(keep["in"]), len(keep["out"])
    else:
        assert isinstance(module, nn.Linear)
        module.in_features, module.out_features = len(keep["in"]), len(keep["out"])


def _take(module: nn.Module, name: str, rows: np.ndarray, columns: np.ndarray | None) -> None:
    """Replace tensor `name` of `module` by its `rows` (axis 0) and `columns` (axis 1)."""
    old = getattr(module, name)
    if old is None:
        return
    data = old.detach().index_select(0, torch.as_tensor(rows, device=old.device))
    if columns is not None:
        data = data.index_select(1, torch.as_tensor(columns, device=old.device))
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(data.clone(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, data.clone())


def _check_forward(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> None:
    """Run the pruned model once in eval mode (batch-norm statistics untouched)."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    with eval_mode(model), torch.no_grad():
        model(*inputs)
