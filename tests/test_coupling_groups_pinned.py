"""Channels the analysis cannot follow are pinned with a reason, never sliced wrongly: a
constant tensor read as an activation (its data would not be cut) and a tensor of rank below 2
(it has no channel axis)."""

from __future__ import annotations

import pytest

from dopant.compiler.irio import parse_ir
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.support.errors import InputError

# A 1x1 conv "conv" (3 -> 4 channels on a 2x2 image), then TAIL, then a linear "fc" (4 -> 5).
HEAD = """func.func @forward(%x: tensor<1x3x2x2xf32>) -> tensor<1x5xf32> {
  %w = qnn.constant dense<0.5> : tensor<4x3x1x1xf32> at "conv.weight"
  %c = qnn.conv2d %x, %w stride [1, 1] pad [0, 0, 0, 0] dilation [1, 1] groups 1 at "conv" : (tensor<1x3x2x2xf32>, tensor<4x3x1x1xf32>) -> tensor<1x4x2x2xf32>
"""
FC = """  %fc_w = qnn.constant dense<0.5> : tensor<5x4xf32> at "fc.weight"
  %fc = qnn.linear %flat, %fc_w at "fc" : (tensor<1x4xf32>, tensor<5x4xf32>) -> tensor<1x5xf32>
  func.return %fc : tensor<1x5xf32>
}
"""
ADD_CONSTANT = """  %k = qnn.constant dense<0.25> : tensor<1x4x2x2xf32> at "k"
  %a = qnn.add %c, %k at "add" : (tensor<1x4x2x2xf32>, tensor<1x4x2x2xf32>) -> tensor<1x4x2x2xf32>
  %p = qnn.global_avg_pool %a at "pool" : tensor<1x4x2x2xf32> -> tensor<1x4x1x1xf32>
  %flat = qnn.reshape %p at "flatten" : tensor<1x4x1x1xf32> -> tensor<1x4xf32>
"""
RANK_ONE = """  %p = qnn.global_avg_pool %c at "pool" : tensor<1x4x2x2xf32> -> tensor<1x4x1x1xf32>
  %r = qnn.reshape %p at "r1" : tensor<1x4x1x1xf32> -> tensor<4xf32>
  %flat = qnn.reshape %r at "r2" : tensor<4xf32> -> tensor<1x4xf32>
"""


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (ADD_CONSTANT, 'qnn.add at "add", which reads a constant tensor'),
        (RANK_ONE, 'qnn.reshape at "r1", whose tensor of rank below 2 has no channel axis'),
    ],
)
def test_channels_the_analysis_cannot_follow_are_pinned(tail: str, reason: str) -> None:
    module = parse_ir(HEAD + tail + FC)
    groups = {g.id: g for g in coupling_groups(module)}
    conv = groups["conv"]
    assert not conv.prunable and conv.reason.startswith(reason)
    with pytest.raises(InputError, match="the group cannot be pruned"):
        PruningPlan.make(list(groups.values()), {"conv": [0, 1]})
