"""Saliency on coupled groups: the magnitude criterion against the parameters autograd says a
channel touches (shared filters counted once), and the data methods on groups with several
gates, as `coupling_groups` finds them on an imported model (a residual add, an inverted
residual's expand and depthwise batch norms), against scaling every gate's γ and β by c."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from saliency_reference import data, group, randomize_norms, references, rows
from torch import Tensor, nn

from dopant.codesign.scores import group_saliency
from dopant.compiler.frontend import import_model
from dopant.passes._prune_channels.groups import Member, coupling_groups


class Branchy(nn.Module):
    """conv(1→4)+BN, depthwise conv (multiplier 2), grouped conv(8→6, groups 2), flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(F.relu(self.dw(x))))
        return self.fc(x.flatten(1))


def touched(module: nn.Module, member: Member, i: int) -> dict[str, Tensor]:
    """The parameters of `module` that channel i of `member` carries, found by autograd: those
    with a gradient when only that channel's outputs are read ("out", "channel"), or when only
    that channel's inputs are nonzero ("in"; the bias reads no input)."""
    torch.manual_seed(3)
    module.eval()
    channels = torch.as_tensor(member.channels[i])
    width = (
        module.in_features
        if isinstance(module, nn.Linear)
        else getattr(module, "in_channels", None)
    )
    if member.dim == "in":
        x = torch.zeros(2, width, 2, 2) if isinstance(module, nn.Conv2d) else torch.zeros(2, width)
        x[:, channels] = torch.randn_like(x[:, channels])
        out = module(x)
        read = (out * torch.randn_like(out)).sum()
    else:
        shape = (
            (2, module.num_features, 2, 2)
            if isinstance(module, nn.BatchNorm2d)
            else (2, width, 2, 2)
        )
        x = torch.randn(shape) if not isinstance(module, nn.Linear) else torch.randn(2, width)
        out = module(x)[:, channels]
        read = (out * torch.randn_like(out)).sum()
    names = [n for n, _ in module.named_parameters() if not (member.dim == "in" and n == "bias")]
    grads = torch.autograd.grad(read, [getattr(module, n) for n in names])
    return {n: g != 0 for n, g in zip(names, grads, strict=True)}


def test_magnitude_sums_each_parameter_a_channel_removes_once() -> None:
    torch.manual_seed(4)
    model = Branchy()
    model.bn1.weight.data.uniform_(-1, 1)
    model.bn1.bias.data.uniform_(-1, 1)
    a = group(
        "conv1",
        4,
        [
            Member("conv1", "conv2d", "out", rows(4)),
            Member("bn1", "batch_norm", "channel", rows(4)),
            Member("dw", "conv2d", "in", rows(4)),
            Member("dw", "conv2d", "out", rows(4, 2)),  # shares its filter with dw's "in"
            Member("conv2", "conv2d", "in", rows(4, 2)),  # grouped: rows of group c // 4
        ],
        [Member("bn1", "batch_norm", "channel", rows(4))],
    )
    b = group(
        "conv2",
        6,
        [Member("conv2", "conv2d", "out", rows(6)), Member("fc", "linear", "in", rows(6, 4))],
        [Member("conv2", "conv2d", "out", rows(6))],
    )
    modules = dict(model.named_modules())
    got = group_saliency(model, [a, b], [], "magnitude")
    for gr in (a, b):
        want = []
        for i in range(gr.size):
            masks: dict[tuple[str, str], Tensor] = {}
            for member in gr.members:
                for name, mask in touched(modules[member.path], member, i).items():
                    key = (member.path, name)
                    masks[key] = masks[key] | mask if key in masks else mask
            want.append(
                sum(
                    float(getattr(modules[p], n).detach().abs()[m].double().sum())
                    for (p, n), m in masks.items()
                )
            )
        np.testing.assert_allclose(got[gr.id], want, rtol=1e-6)
    # one entry by hand: channel 0 removes conv1's filter 0 and bias 0, γ_0 and β_0, the
    # depthwise filters 0 and 1 (its input and output) with their biases, and column 0 of the
    # grouped conv's first three filters (group 0 of two reads input channels 0..3)
    with torch.no_grad():
        w = {name: p.abs().double() for name, p in model.named_parameters()}
        hand = (
            w["conv1.weight"][0].sum()
            + w["conv1.bias"][0]
            + w["bn1.weight"][0]
            + w["bn1.bias"][0]
            + w["dw.weight"][:2].sum()
            + w["dw.bias"][:2].sum()
            + w["conv2.weight"][:3, :2].sum()
        )
    np.testing.assert_allclose(got["conv1"][0], float(hand), rtol=1e-6)


class Coupled(nn.Module):
    """A residual stage: stem conv+BN and conv+BN added (a group gated at bn0 and bn1); an
    inverted-residual-like block: 1x1 expand+BN, depthwise 3x3+BN (one group gated at bn2 and
    bn3), a 1x1 projection with a bias and no batch norm; global pool, linear(3→5)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.expand = nn.Conv2d(4, 6, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.bn3 = nn.BatchNorm2d(6)
        self.project = nn.Conv2d(6, 3, 1)
        self.fc = nn.Linear(3, 5)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn0(self.stem(x)))
        a = F.relu(a + self.bn1(self.conv1(a)))
        h = F.relu(self.bn2(self.expand(a)))
        h = F.relu(self.bn3(self.dw(h)))
        return self.fc(self.project(h).mean(dim=(2, 3)))


# θ_s by hand, per group: every gate's (γ_s, β_s), or the projection's (W_s, b_s).
COUPLED = {"stem": (["bn0", "bn1"], 4), "expand": (["bn2", "bn3"], 6), "project": (["project"], 3)}


def test_a_group_with_several_gates_scales_them_all() -> None:
    torch.manual_seed(5)
    model = Coupled().eval()
    groups = coupling_groups(import_model(model, torch.zeros(1, 1, 5, 5)))
    prunable = {g.id: g for g in groups if g.prunable}
    assert {gid: ([m.path for m in g.gates], g.size) for gid, g in prunable.items()} == COUPLED
    model.double()
    randomize_norms([model.bn0, model.bn1, model.bn2, model.bn3])
    batches = data((5, 3))
    want = references(model, list(COUPLED.values()), batches)
    ends = np.cumsum([size for _, size in COUPLED.values()])
    for method in ("sosp-h", "sosp-i"):  # the Hessian across both gates, and Q across groups
        got = group_saliency(model, groups, batches, method)
        assert list(got) == list(COUPLED)
        for gid, part in zip(COUPLED, np.split(want[method, "exact"], ends[:-1]), strict=True):
            np.testing.assert_allclose(got[gid], part, rtol=1e-6, atol=1e-12, err_msg=method)
