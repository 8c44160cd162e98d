"""The torch mirror `prune_module` against the `prune-channels` pass and against torch itself.

- Exactness: channels silenced in torch first (the gate of every layer producing them: a batch
  norm's scale and shift, or a layer's filter and bias, so the channel is exactly 0 after every
  relu, pool and residual add) are removed by the pass and by `prune_module`, and both pruned
  networks give the unpruned torch model's outputs.
- Agreement: a random plan over every prunable group, applied to the IR (before and after
  `fold-batchnorm`) and to the torch model, gives the same outputs on random inputs, for every
  zoo model and for hypothesis-generated CNNs with residual adds, channel concatenation,
  depthwise and grouped convs.
- Bad input: a plan for another network, a module the mirror cannot slice, a plan made from
  folded IR, member indices outside a layer or listed twice; nothing changes when prune_module
  refuses.

"The same" is to 1e-5 of the output's largest magnitude: float32 sums in another order.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F
from xdsl.dialects.builtin import ModuleOp
from xdsl.rewriter import Rewriter

from dopant.codesign.mirror import prune_module
from dopant.compiler.frontend import import_model
from dopant.compiler.models import zoo
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import ConstantOp
from dopant.passes._prune_channels.groups import Group, Member, coupling_groups
from dopant.passes._prune_channels.plan import GroupPlan, PruningPlan
from dopant.passes.prune_channels import prune
from dopant.runtime import reference
from dopant.support.errors import InputError


def torch_out(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def ir_out(module: ModuleOp, x: torch.Tensor) -> np.ndarray:
    return reference.run(module, x.numpy())[0]


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def torch_size(model: nn.Module) -> int:
    """Parameters and batch-norm statistics: what the IR holds as constants."""
    buffers = [b for name, b in model.named_buffers() if not name.endswith("num_batches_tracked")]
    return sum(t.numel() for t in [*model.parameters(), *buffers])


def ir_size(module: ModuleOp) -> int:
    return sum(op.numpy().size for op in module.walk() if isinstance(op, ConstantOp))


def load_torch_weights(module: ModuleOp, model: nn.Module) -> None:
    """Each IR constant replaced by the torch tensor it was imported from (named by its path)."""
    state = model.state_dict()
    for op in [op for op in module.walk() if isinstance(op, ConstantOp)]:
        assert op.path is not None
        Rewriter.replace_op(op, ConstantOp.of(state[op.path.data].numpy(), op.path.data))


def random_plan(groups: list[Group], rng: np.random.Generator) -> PruningPlan:
    """Each prunable group keeps a random non-empty subset of its channels."""
    keep = {
        g.id: rng.choice(g.size, int(rng.integers(1, g.size + 1)), replace=False).tolist()
        for g in groups
        if g.prunable
    }
    return PruningPlan.make(groups, keep)


def silence(model: nn.Module, group: Group, rows: np.ndarray) -> None:
    """Group channels `rows` made exactly 0 where each is produced (at every gate)."""
    with torch.no_grad():
        for gate in group.gates:
            layer = model.get_submodule(gate.path)
            index = torch.as_tensor(gate.channels[rows].ravel())
            layer.weight[index] = 0  # type: ignore[index]
            if layer.bias is not None:
                layer.bias[index] = 0  # type: ignore[index]


def member_width(model: nn.Module, member: Member) -> int:
    layer = model.get_submodule(member.path)
    if isinstance(layer, nn.BatchNorm2d):
        return layer.num_features
    if isinstance(layer, nn.Linear):
        return layer.out_features if member.dim == "out" else layer.in_features
    assert isinstance(layer, nn.Conv2d)
    return layer.out_channels if member.dim == "out" else layer.in_channels


def removed_indices(plan: PruningPlan) -> dict[tuple[str, str], set[int]]:
    """The indices of each member dimension that the plan's groups (one or several) remove."""
    removed: dict[tuple[str, str], set[int]] = defaultdict(set)
    for planned in plan.groups:
        gone = sorted(set(range(planned.size)) - set(planned.keep))
        for m in planned.members:
            removed[(m.path, m.dim)].update(m.channels[gone].ravel().tolist())
    return removed


def check_agreement(
    model: nn.Module, module: ModuleOp, groups: list[Group], x: torch.Tensor, seed: int
) -> None:
    """A random plan on the IR, on the folded IR and on a copy of `model`: the same outputs."""
    plan = random_plan(groups, np.random.default_rng(seed))
    pruned_ir, folded = module.clone(), module.clone()
    prune(pruned_ir, plan)
    run_pipeline(folded, "fold-batchnorm")
    prune(folded, plan)
    pruned = prune_module(copy.deepcopy(model), plan, example_inputs=x)
    want = torch_out(pruned, x)
    assert_close(ir_out(pruned_ir, x), want)
    assert_close(ir_out(folded, x), want)
    assert torch_size(pruned) == ir_size(pruned_ir)
    removed = removed_indices(plan)
    for m in (m for g in plan.groups for m in g.members):
        assert member_width(pruned, m) == member_width(model, m) - len(removed[(m.path, m.dim)])


def check_exactness(
    model: nn.Module, module: ModuleOp, groups: list[Group], x: torch.Tensor, seed: int
) -> None:
    """A quarter of each prunable group (at least one channel) silenced, then removed."""
    rng = np.random.default_rng(seed)
    keep: dict[str, list[int]] = {}
    for group in (g for g in groups if g.prunable):
        rows = rng.choice(group.size, max(1, group.size // 4), replace=False)
        silence(model, group, rows)
        keep[group.id] = sorted(set(range(group.size)) - set(rows.tolist()))
    plan = PruningPlan.make(groups, keep)
    want = torch_out(model, x)
    load_torch_weights(module, model)
    assert_close(ir_out(module, x), want)  # the IR holds the silenced weights
    prune(module, plan)
    assert_close(ir_out(module, x), want)
    pruned = prune_module(model, plan)
    assert_close(torch_out(pruned, x), want)
    assert torch_size(pruned) == ir_size(module)


# ResNet-18 (9 s of CPU at 32x32) has no layer kind the others lack but its stem's max pool.
@pytest.mark.parametrize("name", [n for n in zoo.names() if n != "resnet18"])
def test_zoo_models_pruned_in_the_ir_and_in_torch_agree(name: str) -> None:
    entry = zoo.get(name)
    model = entry.build()
    x = torch.randn((2, *entry.input_shape[1:]), generator=torch.Generator().manual_seed(0))
    module = import_model(model, x)
    groups = coupling_groups(module)
    full = torch_size(model)
    check_agreement(model, module, groups, x, seed=1)
    check_exactness(model, module, groups, x, seed=2)
    assert torch_size(model) < full


class Unit(nn.Sequential):
    """conv, then optionally a batch norm and a relu or relu6."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int, norm: bool, act: str):
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=not norm)
        }
        if norm:
            layers["bn"] = nn.BatchNorm2d(cout)
        if act:
            layers["act"] = nn.ReLU() if act == "relu" else nn.ReLU6()
        super().__init__(OrderedDict(layers))


class Residual(nn.Module):
    def __init__(self, body: Unit) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Concat(nn.Module):
    """cat([x or a(x), b(x)]) along channels."""

    def __init__(self, a: Unit | None, b: Unit) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x if self.a is None else self.a(x), self.b(x)], dim=1)


# One block of a generated network: (kind, n in 1..3, kernel 1 or 3, batch norm, activation).
Block = tuple[str, int, int, bool, str]
KINDS = ("conv", "grouped", "depthwise", "residual", "concat", "pool")
SIDE = 8


def build(blocks: list[Block], pool_head: bool, seed: int) -> nn.Module:
    """The network the blocks describe on a [2, 3, 8, 8] input, random batch-norm statistics."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _build(blocks, pool_head)


def _build(blocks: list[Block], pool_head: bool) -> nn.Module:
    layers: list[nn.Module] = []
    c, side = 3, SIDE
    for kind, n, k, norm, act in blocks:
        if kind == "grouped" and (c % 2 or c < 4):  # two groups of two or more channels
            layers.append(Unit(c, 4, 1, 1, norm, act))
            c = 4
        if kind == "conv":
            layers.append(Unit(c, 2 * n, k, 1, norm, act))
            c = 2 * n
        elif kind == "grouped":
            layers.append(Unit(c, 2 * n, k, 2, norm, act))
            c = 2 * n
        elif kind == "depthwise":  # a channel multiplier of 2 when n is 1
            layers.append(Unit(c, c * (2 if n == 1 else 1), k, c, norm, act))
            c *= 2 if n == 1 else 1
        elif kind == "residual":  # around a conv, a depthwise conv or (c even) a grouped conv
            groups = (1, c, 2 if c % 2 == 0 and c >= 4 else 1)[n - 1]
            layers.append(Residual(Unit(c, c, k, groups, norm, act)))
        elif kind == "concat":
            a = None if n == 1 else Unit(c, n, k, 1, norm, act)
            layers.append(Concat(a, Unit(c, n + 1, k, 1, norm, act)))
            c = (c if a is None else n) + n + 1
        elif side % 2 == 0:
            layers.append(nn.MaxPool2d(2) if act else nn.AvgPool2d(2))
            side //= 2
    if pool_head:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5)]
    else:
        layers += [nn.Flatten(), nn.Linear(c * side * side, 5)]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.weight.normal_()
            norm.bias.normal_()
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    return model


a_block = st.tuples(
    st.sampled_from(KINDS),
    st.integers(1, 3),
    st.sampled_from((1, 3)),
    st.booleans(),
    st.sampled_from(("", "relu", "relu6")),
)


# Every kind once: a grouped conv (two groups of three) after a concat, so channel j of the
# concat's first input ties to channel j of its second; a residual around a grouped conv; a
# depthwise conv with a channel multiplier; a flatten of 4x4 maps into the classifier.
@example(
    blocks=[
        ("conv", 2, 3, True, "relu"),
        ("concat", 1, 1, True, "relu6"),
        ("grouped", 3, 3, True, ""),
        ("residual", 3, 3, True, "relu"),
        ("pool", 1, 1, False, "relu"),
        ("depthwise", 1, 3, False, "relu"),
        ("concat", 2, 3, False, ""),
    ],
    pool_head=False,
    seed=0,
)
@settings(max_examples=8, derandomize=True, deadline=None)
@given(
    blocks=st.lists(a_block, min_size=1, max_size=5),
    pool_head=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_generated_cnns_pruned_in_the_ir_and_in_torch_agree(
    blocks: list[Block], pool_head: bool, seed: int
) -> None:
    model = build(blocks, pool_head, seed)
    x = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    module = import_model(model, x)
    check_agreement(model, module, coupling_groups(module), x, seed)


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
