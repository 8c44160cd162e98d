"""Saliency on coupled groups: the magnitude criterion against the parameters autograd says a
channel touches (shared filters counted once)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from saliency_reference import group, rows
from torch import Tensor, nn

from dopant.codesign.scores import group_saliency
from dopant.passes._prune_channels.groups import Member


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
