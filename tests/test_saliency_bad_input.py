"""Saliency on bad input: refused with an InputError that says what to do (no data, labels the
default loss cannot take, an empty batch, unknown methods, a model that does not match its
groups), and the model left as it was even when the loss fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from saliency_reference import data, group, rows, tiny
from torch import Tensor

from dopant.codesign import saliency
from dopant.codesign.scores import group_saliency
from dopant.passes._prune_channels.groups import Member
from dopant.support.errors import InputError


def test_the_model_is_left_as_it_was_even_on_error() -> None:
    model, groups = tiny(True)
    model.train()
    model.bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def failing(z: Tensor, y: Tensor) -> Tensor:
        raise RuntimeError("loss failed")

    group_saliency(model, groups, data(), "sosp-h")
    with pytest.raises(RuntimeError, match="loss failed"):
        group_saliency(model, groups, data(), "taylor", failing)
    assert model.training and not model.bn1.training and model.bn2.training
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_bad_input_is_refused_with_what_to_do() -> None:
    model, groups = tiny(True)
    with pytest.raises(InputError, match="saliency needs data"):
        group_saliency(model, groups, [], "taylor")
    with pytest.raises(InputError, match="magnitude, taylor, sosp-h, sosp-i"):
        group_saliency(model, groups, data(), "fisher")
    with pytest.raises(InputError, match="exact, gauss-newton"):
        group_saliency(model, groups, data(), hessian="diagonal")
    with pytest.raises(InputError, match=r"S = 7 .*MiB.*sosp-h"):
        group_saliency(model, groups, data(), "sosp-i", max_structures=6)
    lost = Member("layer9.conv", "conv2d", "in", rows(3))
    with pytest.raises(InputError, match=r"'layer9\.conv'"):
        group_saliency(model, [group("x", 3, [lost], [lost])], data(), "magnitude")


@pytest.mark.parametrize("method", ["taylor", "sosp-h", "sosp-i"])
def test_a_data_method_without_data_says_so(method: str) -> None:
    model, groups = tiny(True)
    for nothing in (None, [], iter(())):
        with pytest.raises(InputError, match=f"saliency needs data: method '{method}' got no"):
            group_saliency(model, groups, nothing, method)
    # magnitude needs none: None and no batches give the same scores
    by_none = group_saliency(model, groups, None, "magnitude")
    assert by_none.keys() == {"conv1", "conv2"}
    for key, value in group_saliency(model, groups, [], "magnitude").items():
        np.testing.assert_array_equal(by_none[key], value)


def test_the_public_saliency_without_data_says_so() -> None:
    model, _ = tiny(True)
    with pytest.raises(InputError, match=r"saliency needs data.*'magnitude', which needs none"):
        saliency(model.float(), torch.zeros(1, 1, 5, 5), None, "sosp-h")  # type: ignore[arg-type]


@pytest.mark.parametrize(("label", "method"), [(5, "taylor"), (-1, "sosp-h"), (9, "sosp-i")])
def test_labels_outside_the_logits_are_refused_with_the_default_loss(
    label: int, method: str
) -> None:
    model, groups = tiny(True)  # 5 logits: cross-entropy takes labels 0 .. 4
    first, (x, y) = data()
    y = y.clone()
    y[2] = label
    with pytest.raises(
        InputError,
        match=rf"batch 1 has the label {label}, but the model gives C = 5 logits.*0 \.\. 4",
    ):
        group_saliency(model, groups, [first, (x, y)], method)


def test_labels_one_to_c_pass_with_a_loss_that_takes_them() -> None:
    model, groups = tiny(True)
    batches = data()
    shifted = [(x, y + 1) for x, y in batches]  # 1 .. 5, as some data sets number classes
    assert max(int(y.max()) for _, y in shifted) == 5
    with pytest.raises(InputError, match="has the label 5"):
        group_saliency(model, groups, shifted, "sosp-h")

    def from_one(z: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(z, y - 1)

    got = group_saliency(model, groups, shifted, "sosp-h", from_one)
    for key, value in group_saliency(model, groups, batches, "sosp-h").items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12)


def test_an_empty_batch_is_refused() -> None:
    model, groups = tiny(True)
    x, y = data((4,))[0]
    with pytest.raises(InputError, match=r"batch 1 holds no samples \(inputs of shape \(0, 1, 5"):
        group_saliency(model, groups, [(x, y), (x[:0], y[:0])], "taylor")
