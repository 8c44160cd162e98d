"""Global channel selection to a MACs or parameters target (`codesign.select`), against brute
force over every kept-count combination of two or three tiny groups, with the costs counted by
hand (the formulas in the comments), not by `costs.py`.

What is checked, for random scores and targets:
- the target is met (hand count), and one step less would not meet it (the greedy stops at the
  first prefix of its order that meets the target);
- with round_to = 1, the removed channels are the lowest-scored ones in one global order (each
  group's top channel excluded: a group keeps at least one);
- on a network whose channels all cost the same (concatenated branches), where the greedy rule
  is optimal, its kept saliency equals the brute-force optimum (also with round_to = 2 and
  equal chunks); on the coupled ResNet-like network, where it need not be, it is at most the
  optimum and the kept counts are allowed ones.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dopant.codesign.select import Target, allowed_counts, select_channels
from dopant.compiler.frontend import import_model
from dopant.dialects.qnn.base import forward
from dopant.passes._prune_channels.costs import LayerShape, layer_shapes
from dopant.passes._prune_channels.groups import Group, coupling_groups
from dopant.support.errors import InputError


class Residual(nn.Module):
    """conv1 -> conv2 + skip -> conv3 -> mean -> fc, on 1x6x6: group conv1 (4 channels: conv1
    out, conv2 in and out, conv3 in) and group conv3 (3: conv3 out, fc in)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv1(x))
        b = torch.relu(self.conv2(a) + a)
        return self.fc(torch.relu(self.conv3(b)).mean((2, 3)))


def residual_costs(kept: dict[str, int]) -> tuple[int, int]:
    """(MACs, params) by hand: 36 output pixels; conv MACs = out * in * k*k * 36."""
    k1, k3 = kept["conv1"], kept["conv3"]
    macs = k1 * 9 * 36 + k1 * k1 * 9 * 36 + k3 * k1 * 36 + 2 * k3
    params = (k1 * 9 + k1) + (k1 * k1 * 9 + k1) + (k3 * k1 + k3) + (2 * k3 + 2)
    return macs, params


class Branches(nn.Module):
    """Three 3x3 convs of the input side by side (4, 4 and 6 channels), concatenated, then
    mean and fc: three groups whose every channel costs the same."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(14, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(torch.cat([self.a(x), self.b(x), self.c(x)], 1))
        return self.fc(y.mean((2, 3)))


def branches_costs(kept: dict[str, int]) -> tuple[int, int]:
    """(MACs, params) by hand: each channel 9*36 conv MACs + 2 fc MACs; 9 + 1 + 2 params."""
    n = sum(kept.values())
    return n * (9 * 36 + 2), n * 12 + 2


Network = tuple[list[Group], list[LayerShape], dict[str, int]]


def _network(model: nn.Module, shape: tuple[int, ...] = (1, 1, 6, 6)) -> Network:
    module = import_model(model.eval(), torch.randn(shape))
    groups = coupling_groups(module)
    sizes = {g.id: g.size for g in groups if g.prunable}
    return groups, layer_shapes(forward(module, "to test")), sizes


@pytest.fixture(scope="module")
def residual() -> Network:
    return _network(Residual())


@pytest.fixture(scope="module")
def branches() -> Network:
    return _network(Branches())


def test_the_hand_counts_are_the_networks(residual: Network, branches: Network) -> None:
    assert residual[2] == {"conv1": 4, "conv3": 3}
    assert branches[2] == {"a": 4, "b": 4, "c": 6}
    assert residual_costs(residual[2]) == (6918, 211)  # 1296 + 5184 + 432 + 6; 40 + 148 + 15 + 8
    assert branches_costs(branches[2]) == (4564, 170)


def _removed_fraction(
    costs: object, sizes: dict[str, int], kept: dict[str, int], col: int
) -> float:
    full = costs(sizes)[col]  # type: ignore[operator]
    return 1 - costs(kept)[col] / full  # type: ignore[operator]


def _best_kept_saliency(scores: dict[str, np.ndarray], kept: dict[str, int]) -> float:
    """The most saliency `kept` counts can keep: each group's top-scored channels."""
    return sum(float(np.sort(scores[g])[::-1][:k].sum()) for g, k in kept.items())


def _brute_force_optimum(
    costs: object, sizes: dict[str, int], scores: dict[str, np.ndarray], target: Target, r: int
) -> float:
    col = 0 if target.metric == "macs" else 1
    best = -1.0
    ids = list(sizes)
    for combo in itertools.product(*(allowed_counts(sizes[g], r) for g in ids)):
        kept = dict(zip(ids, combo, strict=True))
        if _removed_fraction(costs, sizes, kept, col) >= target.fraction:
            best = max(best, _best_kept_saliency(scores, kept))
    return best


scores_strategy = st.lists(st.integers(0, 50), min_size=14, max_size=14)
target_strategy = st.builds(
    Target, st.sampled_from(["macs", "params"]), st.sampled_from([0.05, 0.2, 0.35, 0.5, 0.6, 0.75])
)


def _scores(values: list[int], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Integer scores (ties happen) cut into the groups' sizes, in program order."""
    out, start = {}, 0
    for g, n in sizes.items():
        out[g] = np.array(values[start : start + n], dtype=np.float64)
        start += n
    return out


def _check_greedy(network: Network, costs: object, values: list[int], target: Target) -> None:
    groups, layers, sizes = network
    scores = _scores(values, sizes)
    keep = select_channels(groups, scores, target, layers=layers)
    kept = {g: len(k) for g, k in keep.items()}
    col = 0 if target.metric == "macs" else 1
    assert _removed_fraction(costs, sizes, kept, col) >= target.fraction
    # The global order: every channel but each group's top one (ties: program order, index).
    order = sorted(
        (float(s), position, int(c))
        for position, g in enumerate(sizes)
        for c, s in enumerate(scores[g])
        if c != int(np.argsort(scores[g], kind="stable")[-1])
    )
    removed = {
        (position, c) for _, position, c in order[: sum(sizes.values()) - sum(kept.values())]
    }
    for position, g in enumerate(sizes):
        assert set(keep[g]) == {c for c in range(sizes[g]) if (position, c) not in removed}
    # One channel fewer removed (the last one in the order put back) misses the target.
    last_group = list(sizes)[order[len(removed) - 1][1]]
    fewer = {**kept, last_group: kept[last_group] + 1}
    assert _removed_fraction(costs, sizes, fewer, col) < target.fraction


@settings(max_examples=60)
@given(scores_strategy, target_strategy)
def test_uniform_costs_greedy_is_optimal(
    branches: Network, values: list[int], target: Target
) -> None:
    _check_greedy(branches, branches_costs, values, target)
    groups, layers, sizes = branches
    scores = _scores(values, sizes)
    keep = select_channels(groups, scores, target, layers=layers)
    kept_saliency = sum(float(scores[g][k].sum()) for g, k in keep.items())
    assert kept_saliency == _brute_force_optimum(branches_costs, sizes, scores, target, 1)


@settings(max_examples=60)
@given(scores_strategy, st.sampled_from([0.05, 0.2, 0.35, 0.5, 0.6, 0.75]))
def test_coupled_costs_greedy_is_the_shortest_prefix(
    residual: Network, values: list[int], fraction: float
) -> None:
    groups, layers, sizes = residual
    for metric in ("macs", "params"):
        target = Target(metric, fraction)  # type: ignore[arg-type]
        _check_greedy(residual, residual_costs, values, target)
        scores = _scores(values, sizes)
        keep = select_channels(groups, scores, target, layers=layers)
        kept_saliency = sum(float(scores[g][k].sum()) for g, k in keep.items())
        assert kept_saliency <= _brute_force_optimum(residual_costs, sizes, scores, target, 1)


def test_costs_are_recounted_not_summed_per_channel(residual: Network) -> None:
    """conv1's single-channel figure is 2700 MACs (conv2 4x4 -> 3x3 in- and outputs), but the
    second channel saves only 2052 (conv2 3x3 -> 2x2). With conv1's channels lowest, macs=0.7
    is not met at conv1 = 2 (hand: 648 + 1296 + 216 + 6 = 2166, removed 68.7%; two times the
    figure would claim 78.1%), so a third channel goes (k1 = 1: 324 + 324 + 108 + 6 = 762)."""
    groups, layers, _ = residual
    scores = {"conv1": np.array([1.0, 2.0, 3.0, 4.0]), "conv3": np.array([10.0, 11.0, 12.0])}
    group = next(g for g in groups if g.id == "conv1")
    assert group.macs_per_channel == 2700
    assert residual_costs({"conv1": 2, "conv3": 3})[0] == 2166
    assert select_channels(groups, scores, "macs=0.68", layers=layers) == {
        "conv1": [2, 3],
        "conv3": [0, 1, 2],
    }
    assert select_channels(groups, scores, "macs=0.7", layers=layers) == {
        "conv1": [3],
        "conv3": [0, 1, 2],
    }


@settings(max_examples=40)
@given(scores_strategy, target_strategy)
def test_round_to_equal_chunks_uniform_costs_is_optimal(
    branches: Network, values: list[int], target: Target
) -> None:
    """Groups of 4, 4 and 6 with round_to 2: every chunk is 2 channels of equal cost (at most
    8 of 14 channels go: 57%)."""
    target = Target(target.metric, min(target.fraction, 0.55))
    groups, layers, sizes = branches
    scores = _scores(values, sizes)
    keep = select_channels(groups, scores, target, round_to=2, layers=layers)
    kept = {g: len(k) for g, k in keep.items()}
    assert all(k % 2 == 0 and k >= 2 for k in kept.values())
    col = 0 if target.metric == "macs" else 1
    assert _removed_fraction(branches_costs, sizes, kept, col) >= target.fraction
    for g, k in keep.items():  # each group keeps its top-scored channels
        assert sorted(scores[g][k]) == sorted(np.sort(scores[g])[::-1][: len(k)])
    kept_saliency = sum(float(scores[g][k].sum()) for g, k in keep.items())
    assert kept_saliency == _brute_force_optimum(branches_costs, sizes, scores, target, 2)


def test_round_to_chunk_rule(residual: Network) -> None:
    """round_to 2: conv1 (4) may keep 2 or 4, conv3 (3) keeps 3 or 2 (3 mod 2 = 1 first).
    conv3's chunk {channel 0} has mean 0.5 < conv1's {0, 1} mean 1.5, so it goes first
    (k1 = 4, k3 = 2: 1296 + 5184 + 288 + 4 = 6772, removed 2.1%); then conv1's chunk
    (k1 = 2, k3 = 2: 648 + 1296 + 144 + 4 = 2092, 69.8%)."""
    groups, layers, _ = residual
    scores = {"conv1": np.array([1.0, 2.0, 5.0, 6.0]), "conv3": np.array([0.5, 7.0, 8.0])}
    assert select_channels(groups, scores, "macs=0.02", round_to=2, layers=layers) == {
        "conv1": [0, 1, 2, 3],
        "conv3": [1, 2],
    }
    assert select_channels(groups, scores, "macs=0.3", round_to=2, layers=layers) == {
        "conv1": [2, 3],
        "conv3": [1, 2],
    }
    assert residual_costs({"conv1": 4, "conv3": 2})[0] == 6772
    assert residual_costs({"conv1": 2, "conv3": 2})[0] == 2092
    # Groups smaller than round_to stay whole: conv3 (3 channels) with round_to 3 or 4;
    # conv1 keeps 3 (972 + 2916 + 324 + 6 = 4218, removed 39.0%) or, with 4, all.
    keep = select_channels(groups, scores, "macs=0.3", round_to=3, layers=layers)
    assert keep == {"conv1": [1, 2, 3], "conv3": [0, 1, 2]}
    assert residual_costs({"conv1": 3, "conv3": 3})[0] == 4218
    with pytest.raises(InputError, match=r"no channel it can lose.*macs=0\.3 cannot be met"):
        select_channels(groups, scores, "macs=0.3", round_to=4, layers=layers)
    assert allowed_counts(3, 4) == [3]
    assert allowed_counts(10, 4) == [4, 8, 10]
    assert allowed_counts(8, 4) == [4, 8]


def test_an_unreachable_target_names_the_largest_fraction(residual: Network) -> None:
    """Both groups at one channel: 324 + 324 + 36 + 2 = 686 MACs, 1 - 686/6918 = 90.08%."""
    groups, layers, sizes = residual
    scores = {g: np.arange(n, dtype=np.float64) for g, n in sizes.items()}
    assert residual_costs({"conv1": 1, "conv3": 1})[0] == 686
    keep = select_channels(groups, scores, "macs=0.9", layers=layers)
    assert {g: len(k) for g, k in keep.items()} == {"conv1": 1, "conv3": 1}
    with pytest.raises(InputError, match=r"would empty a group.*at most 90\.0%.*macs=0\.9\b"):
        select_channels(groups, scores, "macs=0.91", layers=layers)


class Bypass(nn.Module):
    """out = big(x) + up(relu(down(x))) on 2000 features: one group, down's 2 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(2000, 2000)
        self.down = nn.Linear(2000, 2)
        self.up = nn.Linear(2, 2000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.big(x) + self.up(torch.relu(self.down(x)))


def test_a_target_below_a_tenth_of_a_percent_of_reach() -> None:
    """MACs 2000*2000 + 2*(2000*k) for k kept: 4008000 at k = 2, 4004000 at k = 1, so the
    network loses at most 4000/4008000 = 0.0998% (0.000998004)."""
    groups, layers, sizes = _network(Bypass(), (1, 2000))
    assert sizes == {"down": 2}
    scores = {"down": np.arange(2.0)}
    assert select_channels(groups, scores, "macs=0.000998", layers=layers) == {"down": [1]}
    with pytest.raises(
        InputError,
        match=r"pruning target macs=0\.001 would empty a group: with every prunable group down "
        r"to one channel the network loses at most 0\.0998% of its MACs; ask for at most "
        r"macs=0\.000998\.",
    ):
        select_channels(groups, scores, "macs=0.001", layers=layers)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("macs=0", r"outside \(0, 1\)"),
        ("params=1", r"outside \(0, 1\)"),
        ("macs=1.5", r"outside \(0, 1\)"),
        ("macs=-0.2", r"outside \(0, 1\)"),
        ("macs=nan", r"outside \(0, 1\)"),
        ("flops=0.5", "not METRIC=FRACTION"),
        ("0.5", "not METRIC=FRACTION"),
        ("macs=half", "not a number"),
    ],
)
def test_bad_targets(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Target.parse(text)


@pytest.mark.parametrize("target", [0.5, ("macs", 0.5), None])
def test_a_target_that_is_not_text(target: object) -> None:
    with pytest.raises(
        InputError,
        match=rf"pruning target {re.escape(repr(target))} is a {type(target).__name__}, not "
        r"METRIC=FRACTION text; write e\.g\. target=\"macs=0\.5\" \(remove half the MACs\)\.",
    ):
        Target.parse(target)  # type: ignore[arg-type]


def test_targets_parse() -> None:
    assert Target.parse("macs=0.5") == Target("macs", 0.5)
    assert Target.parse(" Params = 0.3") == Target("params", 0.3)
    assert str(Target("macs", 0.25)) == "macs=0.25"


def test_bad_scores(residual: Network) -> None:
    groups, layers, _ = residual
    good = {"conv1": np.ones(4), "conv3": np.ones(3)}
    with pytest.raises(InputError, match="no saliency scores for the prunable group 'conv3'"):
        select_channels(groups, {"conv1": np.ones(4)}, "macs=0.5", layers=layers)
    with pytest.raises(InputError, match=r"have shape \[5\].*has 4 channels"):
        select_channels(groups, {**good, "conv1": np.ones(5)}, "macs=0.5", layers=layers)
    with pytest.raises(InputError, match="not all finite"):
        select_channels(
            groups, {**good, "conv3": np.array([1, np.nan, 2])}, "macs=0.5", layers=layers
        )
    with pytest.raises(InputError, match="'fc', which cannot be pruned"):
        select_channels(groups, {**good, "fc": np.ones(2)}, "macs=0.5", layers=layers)
    with pytest.raises(InputError, match="'conv9', which this network does not have"):
        select_channels(groups, {**good, "conv9": np.ones(2)}, "macs=0.5", layers=layers)
    for bad in (0, 16.0, True, "16"):
        with pytest.raises(
            InputError,
            match=rf"round_to must be a positive integer \(1: no rounding\), not {re.escape(repr(bad))}\.",
        ):
            select_channels(groups, good, "macs=0.5", round_to=bad, layers=layers)  # type: ignore[arg-type]
