"""Coupling groups of the zoo's models: MobileNetV2's inverted residuals and ResNet-8's costs
per channel by hand, and for every model, what one channel of each group costs against an
independent count on the pruned IR (and torch's own count for the full network)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.models import zoo
from dopant.dialects.qnn import BatchNormOp, Conv2DOp, LinearOp
from dopant.passes._prune_channels.groups import Group, coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.prune_channels import prune
from dopant.runtime import reference

ZooIR = Callable[..., ModuleOp]


def _members(group: Group) -> list[tuple[str, str, int, int]]:
    return [(m.path, m.dim, m.offset, m.per_channel) for m in group.members]


def _by_id(module: ModuleOp) -> dict[str, Group]:
    return {g.id: g for g in coupling_groups(module)}


def test_mobilenetv2_inverted_residuals(zoo_ir: ZooIR) -> None:
    groups = _by_id(zoo_ir("mobilenetv2"))
    # One group per stage's residual chain (named after its first projection) and one per
    # block's expand -> depthwise -> project path; the stem's group swallows the first block,
    # which has no expansion (its depthwise and projection keep the stem's 16 channels, and its
    # residual add ties the projection's output back to them).
    assert list(groups) == [
        "input",
        "features.0",
        "features.4.conv.0",
        "features.4.conv.6",
        "features.5.conv.0",
        "features.6.conv.0",
        "features.6.conv.6",
        "features.7.conv.0",
        "features.8.conv.0",
        "features.8.conv.6",
        "features.9.conv.0",
        "features.10.conv.0",
        "features.10.conv.6",
        "features.11",
        "classifier.1",
    ]
    # The 24-channel stage: block features.4's projection, its residual partner features.5's
    # projection (the add ties them), and the expansions that read the stage's output.
    assert _members(groups["features.4.conv.6"]) == [
        ("features.4.conv.6", "out", 0, 1),
        ("features.4.conv.7", "channel", 0, 1),
        ("features.5.conv.0", "in", 0, 1),
        ("features.5.conv.6", "out", 0, 1),
        ("features.5.conv.7", "channel", 0, 1),
        ("features.6.conv.0", "in", 0, 1),
    ]
    # Expand 16 -> 96; the depthwise conv ties its input to its output; the projection reads it.
    expand = groups["features.4.conv.0"]
    assert expand.size == 96 and expand.prunable
    assert _members(expand) == [
        ("features.4.conv.0", "out", 0, 1),
        ("features.4.conv.1", "channel", 0, 1),
        ("features.4.conv.3", "in", 0, 1),
        ("features.4.conv.3", "out", 0, 1),
        ("features.4.conv.4", "channel", 0, 1),
        ("features.4.conv.6", "in", 0, 1),
    ]
    # 32x32 input, features.4's depthwise has stride 2: 1x1 expand at 32*32 pixels reading 16
    # channels, 16 * 1024; 3x3 depthwise at 16*16, 9 * 256; projection to 24 channels at 256
    # pixels, 24 * 256: 16384 + 2304 + 6144 = 24832 MACs. Parameters: 16 + 2 + 9 + 2 + 24 = 53.
    assert (expand.macs_per_channel, expand.params_per_channel) == (24832, 53)
    stem = groups["features.0"]
    assert stem.member("features.3.conv.3", "in") and stem.member("features.3.conv.3", "out")
    # The last expansion (96 -> 256) has no depthwise after it: only the classifier reads it.
    assert [m.path for m in groups["features.11"].members] == [
        "features.11",
        "features.12",
        "classifier.1",
    ]


def test_resnet8_costs_per_channel_by_hand(zoo_ir: ZooIR) -> None:
    groups = _by_id(zoo_ir("resnet8"))  # 1x28x28 input; stages at 28x28, 14x14, 7x7
    costs = {gid: (g.macs_per_channel, g.params_per_channel) for gid, g in groups.items()}
    # The stem group: conv1's output channel (3x3 filter on 1 input channel at 784 pixels,
    # 9 * 784 = 7,056), the input column of layer1.0.conv1 and output row of layer1.0.conv2
    # (16 * 9 * 784 = 112,896 each), and the input columns of stage 2's convs at 196 pixels:
    # downsample 32 * 1 * 196 = 6,272 and layer2.0.conv1 32 * 9 * 196 = 56,448.
    # 7,056 + 112,896 + 112,896 + 6,272 + 56,448 = 295,568 MACs. Parameters: 9 + 144 + 144
    # + 32 + 288 weights and the scale and shift of bn1 and layer1.0.bn2, 2 + 2: 621.
    assert costs["conv1"] == (295_568, 621)
    # A block's inner channel: layer1.0.conv1's row and layer1.0.conv2's column, 2 * 112,896;
    # parameters 144 + 144 + 2.
    assert costs["layer1.0.conv1"] == (225_792, 290)
    # Stage 2's residual chain: downsample row 16 * 196 = 3,136, layer2.0.conv2 row
    # 32 * 9 * 196 = 56,448; stage 3's downsample column 64 * 49 = 3,136 and layer3.0.conv1
    # column 64 * 9 * 49 = 28,224: 90,944. Parameters 16 + 288 + 64 + 576 + 2 * 2 = 948.
    assert costs["layer2.0.downsample.0"] == (90_944, 948)
    # Stage 3's chain: downsample row 32 * 49 = 1,568, layer3.0.conv2 row 64 * 9 * 49 =
    # 28,224 and fc's column, 10: 29,802 MACs; parameters 32 + 576 + 10 + 2 * 2 = 622.
    assert costs["layer3.0.downsample.0"] == (29_802, 622)
    assert costs["layer2.0.conv1"] == (
        2 * 32 * 9 * 196 - 32 * 9 * 196 + 16 * 9 * 196,
        16 * 9 + 2 + 32 * 9,
    )


def _constant_size(value: object) -> int:
    return int(value.owner.numpy().size)  # type: ignore[attr-defined]


def _count(module: ModuleOp) -> tuple[int, int]:
    """(MACs, parameters) of a network counted from its IR's shapes and constants: each output
    element of a conv costs one MAC per weight of its filter (in/groups * kh * kw), a linear
    layer one per weight; parameters are weights, biases and batch-norm scales and shifts."""
    macs = params = 0
    for op in module.walk():
        if isinstance(op, Conv2DOp | LinearOp):
            weight = op.weight.owner.numpy()  # type: ignore[union-attr]
            outputs = math.prod(op.output.type.get_shape()[1:])  # type: ignore[attr-defined]
            macs += outputs * math.prod(weight.shape[1:])
            params += weight.size + (_constant_size(op.bias) if op.bias else 0)
        elif isinstance(op, BatchNormOp):
            params += _constant_size(op.scale) + _constant_size(op.shift)
    return macs, params


def _torch_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs per sample of a torch model's convs and linear layers, counted by forward hooks."""
    total = 0

    def hook(layer: nn.Module, _: object, output: torch.Tensor) -> None:
        nonlocal total
        weight = layer.weight  # type: ignore[union-attr]
        total += output[0].numel() * math.prod(weight.shape[1:])

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model(torch.zeros(shape))
    for handle in handles:
        handle.remove()
    return total


ZOO = zoo.names()
SMALLER = {"resnet18": (1, 3, 64, 64)}  # its groups do not depend on the image size


@pytest.mark.parametrize("name", ZOO)
def test_every_group_costs_what_removing_one_of_its_channels_saves(
    name: str, zoo_ir: ZooIR
) -> None:
    entry = zoo.get(name)
    shape = SMALLER.get(name, entry.input_shape)
    model = entry.build(shape)
    module = zoo_ir(name, shape)
    full = _count(module)
    # The independent count agrees with torch on the full network.
    assert full == (
        _torch_macs(model, shape),
        sum(p.numel() for p in model.parameters()),
    )
    groups = coupling_groups(module)
    assert groups[0].id == "input" and not groups[-1].prunable
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for group in [g for g in groups if g.prunable]:
        fewer = module.clone()
        prune(fewer, PruningPlan.make(groups, {group.id: range(1, group.size)}))
        macs, params = _count(fewer)
        assert (full[0] - macs, full[1] - params) == (
            group.macs_per_channel,
            group.params_per_channel,
        ), group.id
        # Pruned alone to one channel, the network still verifies and runs.
        one = module.clone()
        prune(one, PruningPlan.make(groups, {group.id: [group.size - 1]}))
        one.verify()
        for member in group.members:
            assert _width(one, member.path, member.dim) == member.per_channel, group.id
        (logits,) = reference.run(one, x)
        assert logits.shape == (1, entry.num_classes) and np.isfinite(logits).all()


def _width(module: ModuleOp, path: str, dim: str) -> int:
    """How many indices a layer's dimension has: rows (out) or columns (in) of its weight."""
    (op,) = [
        op
        for op in module.walk()
        if isinstance(op, Conv2DOp | LinearOp | BatchNormOp) and op.path.data == path
    ]
    if isinstance(op, BatchNormOp):
        return int(op.output.type.get_shape()[1])  # type: ignore[attr-defined]
    if dim == "out":
        return int(op.output.type.get_shape()[1])  # type: ignore[attr-defined]
    return int(op.input.type.get_shape()[1])  # type: ignore[attr-defined]
