"""Tests for the model zoo: shapes, known parameter counts, determinism and the registry."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import nn

from dopant.compiler.models import zoo


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", zoo.names())
def test_default_input_gives_logits(name: str) -> None:
    entry = zoo.get(name)
    model = entry.build()
    assert not model.training
    x = torch.randn(entry.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (entry.input_shape[0], entry.num_classes)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", zoo.names())
def test_no_module_is_reused(name: str) -> None:
    # A module instance called at two places gives one module path to two graph nodes.
    model = zoo.get(name).build()
    assert len(list(model.modules())) == len(list(model.named_modules(remove_duplicate=False)))


def test_resnet20_parameter_count() -> None:
    # CIFAR ResNet-20, 3 input channels, 10 classes, option-B (1x1 conv + BN) shortcuts.
    # A 3x3 conv c->d has 9*c*d weights (no bias); a BN over d channels has 2*d parameters.
    stem = 9 * 3 * 16 + 2 * 16  # 432 + 32 = 464
    block16 = 2 * (9 * 16 * 16 + 2 * 16)  # 4,672
    block32 = 2 * (9 * 32 * 32 + 2 * 32)  # 18,560
    block64 = 2 * (9 * 64 * 64 + 2 * 64)  # 73,984
    first32 = 9 * 16 * 32 + 9 * 32 * 32 + 2 * 2 * 32 + (16 * 32 + 2 * 32)  # 14,528
    first64 = 9 * 32 * 64 + 9 * 64 * 64 + 2 * 2 * 64 + (32 * 64 + 2 * 64)  # 57,728
    fc = 64 * 10 + 10  # 650
    expected = stem + 3 * block16 + first32 + 2 * block32 + first64 + 2 * block64 + fc
    assert expected == 272_474  # option A (no shortcut parameters) would be 269,722
    model = zoo.get("resnet20").build(input_shape=(1, 3, 32, 32), num_classes=10)
    assert _params(model) == expected


def test_resnet18_parameter_count_matches_torchvision() -> None:
    model = zoo.get("resnet18").build(input_shape=(1, 3, 224, 224), num_classes=1000)
    assert _params(model) == 11_689_512


def test_same_name_same_weights_and_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = zoo.get("lenet5").build().state_dict()
    second = zoo.get("lenet5").build().state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resnet8_takes_cifar_input() -> None:
    model = zoo.get("resnet8").build(input_shape=(2, 3, 32, 32))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "vgg_small"])
def test_flattening_models_follow_the_input_size(name: str) -> None:
    model = zoo.get(name).build(input_shape=(2, 3, 40, 36), num_classes=7)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 40, 36)).shape == (2, 7)


def test_mobilenetv2_has_depthwise_convs_and_residual_adds() -> None:
    model = zoo.get("mobilenetv2").build()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1 and c.groups == c.in_channels]
    assert len(depthwise) == 8  # one per inverted residual block: 1 + 2 + 2 + 2 + 1
    graph = torch.fx.symbolic_trace(model).graph
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == 4  # the stride-1 blocks whose channels do not change


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown zoo model 'resnet50'") as info:
        zoo.get("resnet50")
    assert f"available: {', '.join(zoo.names())}" in str(info.value)
    assert zoo.names() == [
        "mlp",
        "lenet5",
        "resnet8",
        "resnet20",
        "mobilenetv2",
        "vgg_small",
        "resnet18",
    ]


def test_build_rejects_a_shape_that_is_not_nchw() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        zoo.get("mlp").build(input_shape=(1, 28, 28))
