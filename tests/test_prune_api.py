"""`dopant.codesign.prune` from Python: the pruned torch module and the pruned IR are the same
network (reference interpreter vs torch, 1e-5), the costs are counted by hand, the target is
met, and the user's model is left as it was; `model_groups` and `saliency` are the import,
the groups and the scores in one call."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from dopant.codesign.groups import model_groups, saliency
from dopant.codesign.pruning import prune
from dopant.codesign.scores import group_saliency
from dopant.compiler.frontend import import_model
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.runtime.reference import run
from dopant.support.errors import InputError


class Net(nn.Module):
    """conv1 + bn (16x8x8 -> 6 channels), a residual conv2 + bn, conv3 (8 channels, stride 2:
    4x4), mean, fc to 3 classes: groups conv1 (6 channels) and conv3 (8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)) + a)
        return self.fc(torch.relu(self.conv3(b)).mean((2, 3)))


def hand_macs(k1: int, k3: int) -> int:
    """conv1 k1*2*9*64, conv2 k1*k1*9*64, conv3 k3*k1*9*16, fc 3*k3 (per sample)."""
    return k1 * 2 * 9 * 64 + k1 * k1 * 9 * 64 + k3 * k1 * 9 * 16 + 3 * k3


@pytest.fixture(scope="module")
def data() -> tuple[nn.Module, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # batch norms with statistics of their own, so no channel is alike
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    batches = [(torch.randn(8, 2, 8, 8), torch.randint(0, 3, (8,))) for _ in range(2)]
    return model, torch.randn(4, 2, 8, 8), batches  # the IR takes batches of 4


@pytest.mark.parametrize(
    ("method", "target"), [("sosp-h", "macs=0.5"), ("magnitude", "params=0.3")]
)
def test_prune_gives_one_network_in_torch_and_in_ir(
    data: tuple[nn.Module, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]],
    method: str,
    target: str,
) -> None:
    model, example, batches = data
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune(model, example, batches, method, target)
    k1, k3 = result.model.conv1.out_channels, result.model.conv3.out_channels
    assert (result.before.macs, result.after.macs) == (hand_macs(6, 8), hand_macs(k1, k3))
    params = sum(p.numel() for p in result.model.parameters())
    assert (result.before.params, result.after.params) == (
        sum(p.numel() for p in model.parameters()),
        params,
    )
    fraction = float(target.split("=")[1])
    assert result.removed >= fraction
    x = torch.randn(4, 2, 8, 8)
    with torch.no_grad():
        expected = result.model(x).numpy()
    (got,) = run(result.ir, x.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert (k1, k3) == tuple(len(result.plan.keep()[g]) for g in ("conv1", "conv3"))
    # The kept channels are each group's highest-scored (ranked by the scores returned).
    for group_id, keep in result.plan.keep().items():
        scores = result.scores[group_id]
        dropped = np.setdiff1d(np.arange(len(scores)), keep)
        assert dropped.size == 0 or scores[dropped].max() <= scores[list(keep)].min()


def test_model_groups_and_saliency_are_import_groups_scores(
    data: tuple[nn.Module, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]],
) -> None:
    model, example, batches = data
    groups = coupling_groups(import_model(model, example))
    assert [(g.id, g.size) for g in model_groups(model, example)] == [
        (g.id, g.size) for g in groups
    ]
    ours = saliency(model, example, batches, "taylor")
    theirs = group_saliency(model, groups, batches, "taylor")
    assert ours.keys() == theirs.keys() == {"conv1", "conv3"}
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


def unread() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches that fail the test if read: a generator raises when iterated, not when made."""
    raise AssertionError("the batches were read")
    yield


def test_a_target_out_of_reach_fails_before_the_batches_are_read(
    data: tuple[nn.Module, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]],
) -> None:
    model, example, _ = data
    # Both groups down to one channel: 1 - 1875/34584 = 0.94578, floored to 0.945.
    assert (hand_macs(1, 1), hand_macs(6, 8)) == (1875, 34584)
    with pytest.raises(InputError, match=r"would empty a group: .* at most 94\.5%.*macs=0\.945\."):
        prune(model, example, unread(), "sosp-h", "macs=0.95")


def test_a_bad_target_or_round_to_fails_before_any_work() -> None:
    batches = unread

    model = Net()  # not even an example input that fits: nothing is imported
    with pytest.raises(InputError, match=r"pruning target 0\.5 is a float, not METRIC=FRACTION"):
        prune(model, torch.zeros(1), batches(), target=0.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"round_to must be a positive integer .*, not 16\.0\."):
        prune(model, torch.zeros(1), batches(), round_to=16.0)  # type: ignore[arg-type]


def test_given_scores_are_used_as_they_are_and_batches_are_not_read(
    data: tuple[nn.Module, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]],
) -> None:
    model, example, batches = data
    first = prune(model, example, batches, "sosp-h", "macs=0.3")

    def unread() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise AssertionError("the batches were read although the scores were given")
        yield  # a generator: the error comes when it is read

    again = prune(model, example, unread(), "sosp-h", "macs=0.3", scores=first.scores)
    kept = [(g.id, g.keep) for g in first.plan.groups]
    assert [(g.id, g.keep) for g in again.plan.groups] == kept and again.after == first.after
    assert all(np.array_equal(again.scores[k], v) for k, v in first.scores.items())
