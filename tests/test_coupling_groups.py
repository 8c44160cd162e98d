"""Coupling groups on hand-written `qnn` IR: which layer dimensions share channels (with their
offsets and spans), which groups cannot be pruned and why, and what one channel of a group
costs, by hand (the zoo's groups: tests/test_coupling_groups_zoo.py)."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.irio import parse_ir
from dopant.passes._prune_channels.groups import Group, coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.support.errors import InputError


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
    with pytest.raises(InputError, match=r'cannot be pruned \(qnn.reshape at "view"'):
        PruningPlan.make(groups, {conv.id: [0]})
