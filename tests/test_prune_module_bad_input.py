"""prune_module on plans and models it must refuse (another network's plan, a module it cannot
slice, member indices outside a layer or listed twice, a grouped conv cut unevenly), each
refused before anything changes, and the forward check that undoes a pruning that breaks the
model; and the pruned module trains with a fresh optimizer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dopant.codesign.mirror import prune_module
from dopant.compiler.frontend import import_model
from dopant.compiler.pipeline import run_pipeline
from dopant.passes._prune_channels.groups import Member, coupling_groups
from dopant.passes._prune_channels.plan import GroupPlan, PruningPlan
from dopant.support.errors import InputError


def torch_out(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(torch.relu(self.bn2(self.conv2(x))), 1))


class Custom(nn.Module):
    """A conv layer of the user's own: one `F.conv2d`, so the IR names the conv by its path."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


class WithCustom(Small):
    def __init__(self) -> None:
        super().__init__()
        self.conv2 = Custom()  # type: ignore[assignment]


def small_plan(model: nn.Module, fold: bool = False) -> tuple[PruningPlan, torch.Tensor]:
    """conv1's group keeps channels 1, 2, 5 and conv2's keeps 0 and 3."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    module = import_model(model.eval(), x)
    if fold:
        run_pipeline(module, "fold-batchnorm")
    plan = PruningPlan.make(coupling_groups(module), {"conv1": [1, 2, 5], "conv2": [0, 3]})
    return plan, x


def snapshot(model: nn.Module) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The tensor objects and a copy of their values."""
    tensors = [*model.parameters(), *model.buffers()]
    return tensors, {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: tuple[list[torch.Tensor], dict]) -> None:
    tensors, state = before
    assert all(
        a is b for a, b in zip([*model.parameters(), *model.buffers()], tensors, strict=True)
    )
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_the_pruned_module_has_new_parameters_a_fresh_optimizer_trains() -> None:
    model = Small()
    plan, x = small_plan(model)
    model.bn1.weight.requires_grad_(False)
    gamma, mean = model.bn1.weight.detach().clone(), model.bn1.running_mean.clone()
    model.train()
    prune_module(model, plan, example_inputs=x)
    # Slices of the originals; the forward check left the statistics and the mode alone.
    assert torch.equal(model.bn1.weight, gamma[[1, 2, 5]])
    assert torch.equal(model.bn1.running_mean, mean[[1, 2, 5]])
    assert model.training and model.bn1.training
    assert not model.bn1.weight.requires_grad and model.conv1.weight.requires_grad
    assert (model.conv1.out_channels, model.conv2.in_channels, model.fc.in_features) == (3, 3, 32)
    before = model.conv2.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    optimizer.step()
    assert not torch.equal(model.conv2.weight, before)


def test_a_plan_for_another_network_is_refused_before_anything_changes() -> None:
    plan, _ = small_plan(Small())
    other = Small()
    other.add_module("conv2b", other.conv2)  # renamed: the plan's conv2 is not there
    del other.conv2
    before = snapshot(other)
    with pytest.raises(InputError, match=r"'conv2', which the model does not have"):
        prune_module(other, plan)
    assert_unchanged(other, before)
    linear = Small()
    linear.conv2 = nn.Linear(6, 4)  # type: ignore[assignment]
    with pytest.raises(InputError, match=r"'conv2' is a Linear; was the plan made for another"):
        prune_module(linear, plan)


def test_a_module_the_mirror_cannot_slice_is_named() -> None:
    model = WithCustom()
    plan, _ = small_plan(model)
    before = snapshot(model)
    with pytest.raises(InputError, match=r"'conv2' is a Custom, which prune_module cannot slice"):
        prune_module(model, plan)
    assert_unchanged(model, before)


def test_a_plan_from_folded_ir_fails_the_forward_check_and_is_undone() -> None:
    model = Small()
    plan, x = small_plan(model, fold=True)
    assert {m.op for g in plan.groups for m in g.members} == {"conv2d", "linear"}
    want = torch_out(model, x)
    before = snapshot(model)
    with pytest.raises(InputError, match=r"left unpruned: .* make the plan before fold-batchnorm"):
        prune_module(model, plan, example_inputs=x)
    assert_unchanged(model, before)
    assert model.conv1.out_channels == 6 and np.array_equal(torch_out(model, x), want)


def test_a_grouped_conv_cut_unevenly_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2))
    # Output channels 0 and 1 of group 0 go but none of group 1: the groups would differ.
    member = Member("0", "conv2d", "out", np.arange(8)[:, None])
    plan = PruningPlan((GroupPlan("0", 8, (2, 3, 4, 5, 6, 7), (member,)),))
    with pytest.raises(InputError, match=r"cuts the grouped conv '0' \(2 groups\) differently"):
        prune_module(model, plan)
    assert model[0].weight.shape == (8, 2, 3, 3)


def _remapped(
    plan: PruningPlan, path: str, indices: Callable[[np.ndarray], np.ndarray]
) -> PruningPlan:
    """`plan` with group conv1's member `path` listing `indices(its indices)` instead."""
    groups = []
    for g in plan.groups:
        members = tuple(
            Member(m.path, m.op, m.dim, indices(m.channels))
            if g.id == "conv1" and m.path == path
            else m
            for m in g.members
        )
        groups.append(GroupPlan(g.id, g.size, g.keep, members))
    return PruningPlan(tuple(groups))


@pytest.mark.parametrize(
    ("shift", "message"),
    [
        # conv2's "in" indices 0..5 moved down one: -1..4; conv1's "out" would lose 0, 3, 4
        # and conv2's input -1, 2, 3 (numpy drops -1 unasked), a network that no longer fits.
        (-1, r"member 'conv2' \(in\) lists index -1, outside the 6 of 'conv2' \(0..5\)"),
        (1, r"member 'conv2' \(in\) lists index 6, outside the 6 of 'conv2' \(0..5\)"),
    ],
)
def test_member_indices_outside_the_layer_are_refused(shift: int, message: str) -> None:
    model = Small()
    plan, _ = small_plan(model)
    before = snapshot(model)
    with pytest.raises(InputError, match=message):
        prune_module(model, _remapped(plan, "conv2", lambda c: c + shift))
    assert_unchanged(model, before)


def test_member_indices_listed_twice_are_refused() -> None:
    model = Small()
    plan, _ = small_plan(model)
    before = snapshot(model)
    # conv1's group of 6 channels; conv2's input listed as 0, 0, 1, 1, 2, 2.
    with pytest.raises(InputError, match=r"member 'conv2' \(in\) lists index 0 of 'conv2' twice"):
        prune_module(model, _remapped(plan, "conv2", lambda c: c // 2))
    assert_unchanged(model, before)
    # Two groups listing the same index of one layer: conv2's group claims conv1's outputs too.
    conv1_out = next(m for m in plan.groups[0].members if m.path == "conv1")
    other = plan.groups[1]
    extra = Member("conv1", "conv2d", "out", conv1_out.channels[: other.size])
    clash = PruningPlan(
        (plan.groups[0], GroupPlan(other.id, other.size, other.keep, (*other.members, extra)))
    )
    with pytest.raises(InputError, match=r"lists index 0 of 'conv1' \(out\), which group 'conv1'"):
        prune_module(model, clash)
    assert_unchanged(model, before)


class PicksChannel(Small):
    """Adds conv1's channel 5 to every channel: an IndexError in torch once conv1 keeps 3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + x[:, 5, None]
        return self.fc(torch.flatten(torch.relu(self.bn2(self.conv2(x))), 1))


def test_any_error_of_the_forward_check_undoes_the_pruning() -> None:
    plan, x = small_plan(Small())  # the same layers; the IR has no slice to import
    model = PicksChannel()
    want = torch_out(model, x)
    before = snapshot(model)
    with pytest.raises(
        InputError, match=r"fails on the example inputs \(IndexError: index 5 is out of"
    ) as e:
        prune_module(model, plan, example_inputs=x)
    assert isinstance(e.value.__cause__, IndexError)
    assert_unchanged(model, before)
    assert model.conv1.out_channels == 6 and np.array_equal(torch_out(model, x), want)
