"""Coupling groups on hand-written `qnn` IR and on the zoo: which layer dimensions share
channels (with their offsets and spans), which groups cannot be pruned and why, and what one
channel of a group costs, by hand and against an independent count on the pruned IR (and
torch's own parameter count for the full network)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.irio import parse_ir
from dopant.compiler.models import zoo
from dopant.dialects.qnn import BatchNormOp, Conv2DOp, LinearOp
from dopant.passes._prune_channels.groups import Group, coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.prune_channels import prune
from dopant.runtime import reference

ZooIR = Callable[..., ModuleOp]


def _tensor(*dims: int) -> str:
    return f"tensor<{'x'.join(map(str, dims))}xf32>"


def _conv(
    out: str, x: str, path: str, cin: int, cout: int, size: int, *, kernel: int = 1, groups: int = 1
) -> str:
    """A bias-free `size`x`size` conv (stride 1, 'same' padding) and its weight, as IR text."""
    pad = kernel // 2
    w = _tensor(cout, cin // groups, kernel, kernel)
    return (
        f'  %{out}_w = qnn.constant dense<0.5> : {w} at "{path}.weight"\n'
        f"  %{out} = qnn.conv2d %{x}, %{out}_w stride [1, 1] pad [{pad}, {pad}, {pad}, {pad}] "
        f'dilation [1, 1] groups {groups} at "{path}" : '
        f"({_tensor(1, cin, size, size)}, {w}) -> {_tensor(1, cout, size, size)}\n"
    )


def _relu(out: str, x: str, path: str, *dims: int) -> str:
    return f'  %{out} = qnn.relu %{x} at "{path}" : {_tensor(*dims)}\n'


def _head(x: str, channels: int, size: int, classes: int) -> str:
    """Global average pool, flatten and a linear classifier "fc" returning the logits."""
    return (
        f'  %pool = qnn.global_avg_pool %{x} at "pool" : {_tensor(1, channels, size, size)} '
        f"-> {_tensor(1, channels, 1, 1)}\n"
        f'  %flat = qnn.reshape %pool at "flatten" : {_tensor(1, channels, 1, 1)} -> '
        f"{_tensor(1, channels)}\n"
        f'  %fc_w = qnn.constant dense<0.5> : {_tensor(classes, channels)} at "fc.weight"\n'
        f'  %fc = qnn.linear %flat, %fc_w at "fc" : ({_tensor(1, channels)}, '
        f"{_tensor(classes, channels)}) -> {_tensor(1, classes)}\n"
        f"  func.return %fc : {_tensor(1, classes)}\n"
    )


def _module(channels: int, size: int, classes: int, body: str) -> ModuleOp:
    return parse_ir(
        f"func.func @forward(%x: {_tensor(1, channels, size, size)}) -> "
        f"{_tensor(1, classes)} {{\n{body}}}\n"
    )


def _members(group: Group) -> list[tuple[str, str, int, int]]:
    return [(m.path, m.dim, m.offset, m.per_channel) for m in group.members]


def _by_id(module: ModuleOp) -> dict[str, Group]:
    return {g.id: g for g in coupling_groups(module)}


def _resnet_stage() -> ModuleOp:
    """A stem conv and two residual blocks of width 4 on a 4x4 image, then the classifier."""
    body = _conv("stem", "x", "stem", 1, 4, 4, kernel=3) + _relu("r0", "stem", "relu", 1, 4, 4, 4)
    for b, (x, out) in enumerate((("r0", "r2"), ("r2", "r4")), start=1):
        body += (
            _conv(f"c{b}a", x, f"block{b}.conv1", 4, 4, 4, kernel=3)
            + _relu(f"c{b}r", f"c{b}a", f"block{b}.relu1", 1, 4, 4, 4)
            + _conv(f"c{b}b", f"c{b}r", f"block{b}.conv2", 4, 4, 4, kernel=3)
            + f'  %s{b} = qnn.add %c{b}b, %{x} at "block{b}/add" : '
            f"({_tensor(1, 4, 4, 4)}, {_tensor(1, 4, 4, 4)}) -> {_tensor(1, 4, 4, 4)}\n"
            + _relu(out, f"s{b}", f"block{b}.relu2", 1, 4, 4, 4)
        )
    return _module(1, 4, 3, body + _head("r4", 4, 4, 3))


def test_a_resnet_stage_is_one_group_across_its_residual_chain() -> None:
    groups = _by_id(_resnet_stage())
    assert list(groups) == ["input", "stem", "block1.conv1", "block2.conv1", "fc"]
    stem = groups["stem"]
    # Both adds tie the block outputs to the stem's: one group of 4 channels, one index each.
    assert _members(stem) == [
        ("stem", "out", 0, 1),
        ("block1.conv1", "in", 0, 1),
        ("block1.conv2", "out", 0, 1),
        ("block2.conv1", "in", 0, 1),
        ("block2.conv2", "out", 0, 1),
        ("fc", "in", 0, 1),
    ]
    assert stem.size == 4 and stem.prunable and stem.reason == ""
    assert [m.channels.ravel().tolist() for m in stem.members] == [[0, 1, 2, 3]] * 6
    # One channel on a 4x4 image (16 pixels): the stem's 3x3 filter on 1 input channel, 9 * 16;
    # 4 * 9 weights at 16 pixels in each of the two block convs reading it and the two writing
    # it, 4 * 576; the classifier's 3 weights: 144 + 2304 + 3 = 2451 MACs and 9 + 144 + 3 = 156
    # parameters (no biases).
    assert (stem.macs_per_channel, stem.params_per_channel) == (2451, 156)
    inner = groups["block1.conv1"]
    assert _members(inner) == [("block1.conv1", "out", 0, 1), ("block1.conv2", "in", 0, 1)]


def test_input_channels_and_logits_are_not_prunable() -> None:
    groups = _by_id(_resnet_stage())
    assert not groups["input"].prunable
    assert groups["input"].reason == "the network's input channels"
    assert _members(groups["input"]) == [("stem", "in", 0, 1)]
    assert not groups["fc"].prunable
    assert groups["fc"].reason == "the network's outputs (logits)"
    assert _members(groups["fc"]) == [("fc", "out", 0, 1)]


@pytest.mark.parametrize("multiplier", [1, 2])
def test_a_depthwise_conv_ties_its_input_to_its_outputs(multiplier: int) -> None:
    m = multiplier
    body = (
        _conv("e", "x", "expand", 1, 3, 4)
        + _conv("d", "e", "dw", 3, 3 * m, 4, kernel=3, groups=3)
        + _relu("r", "d", "relu", 1, 3 * m, 4, 4)
    )
    groups = _by_id(_module(1, 4, 2, body + _head("r", 3 * m, 4, 2)))
    assert list(groups) == ["input", "expand", "fc"]
    expand = groups["expand"]
    assert expand.size == 3
    assert _members(expand) == [
        ("expand", "out", 0, 1),
        ("dw", "in", 0, 1),
        ("dw", "out", 0, m),
        ("fc", "in", 0, m),
    ]
    # torch's depthwise layout: input channel g feeds outputs g*m .. g*m + m-1.
    want = np.arange(3 * m).reshape(3, m)
    assert np.array_equal(expand.member("dw", "out").channels, want)  # type: ignore[union-attr]
    assert np.array_equal(expand.member("fc", "in").channels, want)  # type: ignore[union-attr]
    # One channel at 16 pixels: expand's 1x1 filter, 16; m depthwise 3x3 filters, m * 9 * 16;
    # 2 classifier weights per output: 16 + 144m + 2m MACs, 1 + 9m + 2m parameters.
    assert expand.macs_per_channel == 16 + 146 * m
    assert expand.params_per_channel == 1 + 11 * m


def test_a_grouped_conv_ties_channel_j_of_every_group() -> None:
    # groups=2: 4 input channels (2 per group) and 6 outputs (3 per group).
    body = (
        _conv("a", "x", "a", 1, 4, 4)
        + _conv("g", "a", "g", 4, 6, 4, kernel=3, groups=2)
        + _relu("r", "g", "relu", 1, 6, 4, 4)
    )
    groups = _by_id(_module(1, 4, 2, body + _head("r", 6, 4, 2)))
    a, g = groups["a"], groups["g"]
    # Every group keeps the same width, so channel j of group 0 goes with channel j of group 1:
    # a group of 2 (channels per conv group), each spanning `groups` = 2 indices.
    assert a.size == 2
    assert _members(a) == [("a", "out", 0, 2), ("g", "in", 0, 2)]
    assert a.member("a", "out").channels.tolist() == [[0, 2], [1, 3]]  # type: ignore[union-attr]
    assert g.size == 3
    assert _members(g) == [("g", "out", 0, 2), ("fc", "in", 0, 2)]
    assert g.member("g", "out").channels.tolist() == [[0, 3], [1, 4], [2, 5]]  # type: ignore[union-attr]
    # Channel j of `a` at 16 pixels: 2 of a's 1x1 filters, 2 * 16; one input column of each
    # of g's 6 filters (3x3), 6 * 9 * 16 = 864: 896 MACs and 2 + 54 = 56 parameters.
    assert (a.macs_per_channel, a.params_per_channel) == (896, 56)


def test_concat_puts_its_producers_groups_side_by_side() -> None:
    body = (
        _conv("a", "x", "a", 1, 2, 4)
        + _conv("b", "x", "b", 1, 3, 4)
        + f'  %cat = qnn.concat %a, %b axis 1 at "cat" : ({_tensor(1, 2, 4, 4)}, '
        f"{_tensor(1, 3, 4, 4)}) -> {_tensor(1, 5, 4, 4)}\n" + _conv("c", "cat", "c", 5, 2, 4)
    )
    groups = _by_id(_module(1, 4, 2, body + _head("c", 2, 4, 2)))
    assert list(groups) == ["input", "a", "b", "c", "fc"]
    # c's input channels 0-1 are a's, 2-4 are b's.
    assert _members(groups["a"]) == [("a", "out", 0, 1), ("c", "in", 0, 1)]
    assert _members(groups["b"]) == [("b", "out", 0, 1), ("c", "in", 2, 1)]
    assert groups["b"].member("c", "in").channels.ravel().tolist() == [2, 3, 4]  # type: ignore[union-attr]
    assert _members(groups["c"]) == [("c", "out", 0, 1), ("fc", "in", 0, 1)]


def _flatten_net(reshaped: int, spatial: int) -> ModuleOp:
    """conv (3 channels, 2x2) -> relu -> reshape to [1, reshaped, spatial, spatial] when
    `spatial`, else to [1, 12] -> linear "fc1" (12 features) -> relu -> linear "fc"."""
    body = _conv("a", "x", "conv", 1, 3, 2, kernel=3) + _relu("r", "a", "relu", 1, 3, 2, 2)
    if spatial:
        view = _tensor(1, reshaped, spatial, spatial)
        body += f'  %v = qnn.reshape %r at "view" : {_tensor(1, 3, 2, 2)} -> {view}\n'
        body += f'  %f = qnn.reshape %v at "flatten" : {view} -> {_tensor(1, 12)}\n'
    else:
        body += f'  %f = qnn.reshape %r at "flatten" : {_tensor(1, 3, 2, 2)} -> {_tensor(1, 12)}\n'
    body += (
        f'  %w1 = qnn.constant dense<0.5> : {_tensor(4, 12)} at "fc1.weight"\n'
        f'  %h = qnn.linear %f, %w1 at "fc1" : ({_tensor(1, 12)}, {_tensor(4, 12)}) -> '
        f"{_tensor(1, 4)}\n"
        f'  %w2 = qnn.constant dense<0.5> : {_tensor(2, 4)} at "fc.weight"\n'
        f'  %fc = qnn.linear %h, %w2 at "fc" : ({_tensor(1, 4)}, {_tensor(2, 4)}) -> '
        f"{_tensor(1, 2)}\n  func.return %fc : {_tensor(1, 2)}\n"
    )
    return _module(1, 2, 2, body)


def test_a_flatten_hands_each_channel_its_pixels_in_the_linear_layer() -> None:
    conv = _by_id(_flatten_net(0, 0))["conv"]
    # Channel c of the 3x2x2 map is features 4c .. 4c + 3 of the flattened vector (C-order).
    assert _members(conv) == [("conv", "out", 0, 1), ("fc1", "in", 0, 4)]
    assert conv.member("fc1", "in").channels.tolist() == [  # type: ignore[union-attr]
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]
    # One channel: a 3x3 filter at 4 pixels, 36; 4 features into each of fc1's 4 outputs, 16.
    assert (conv.macs_per_channel, conv.params_per_channel) == (52, 25)


def test_a_reshape_other_than_a_flatten_pins_channels_naming_the_op() -> None:
    groups = coupling_groups(_flatten_net(12, 1))  # [1, 3, 2, 2] -> [1, 12, 1, 1]
    (conv,) = [g for g in groups if g.member("conv", "out")]
    assert not conv.prunable
    assert (
        conv.reason == 'qnn.reshape at "view", a reshape other than a flatten, which mixes channels'
    )
    with pytest.raises(Exception, match=r'cannot be pruned \(qnn.reshape at "view"'):
        PruningPlan.make(groups, {conv.id: [0]})


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
