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

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from xdsl.dialects.builtin import ModuleOp
from xdsl.rewriter import Rewriter

from dopant.codesign.mirror import prune_module
from dopant.compiler.frontend import import_model
from dopant.compiler.models import zoo
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import ConstantOp
from dopant.passes._prune_channels.groups import Group, Member, coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.prune_channels import prune
from dopant.runtime import reference


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
