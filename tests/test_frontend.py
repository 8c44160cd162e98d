"""The torch frontend: what it imports, how it names ops, and how it refuses what it cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.models import zoo
from dopant.compiler.summary import op_counts
from dopant.dialects.qnn import (
    AvgPool2DOp,
    Conv2DOp,
    LinearOp,
    MaxPool2DOp,
    QnnOp,
)
from dopant.dialects.qnn.base import ints
from dopant.runtime import reference
from dopant.support.errors import InputError, UnsupportedOpsError


def _ops(module: object, kind: type) -> list:
    return [op for op in module.walk() if isinstance(op, kind)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [n for n in zoo.names() if n != "resnet18"])
def test_zoo_models_import_and_round_trip_through_text(name: str) -> None:
    entry = zoo.get(name)
    module = import_model(entry.build(), torch.randn(entry.input_shape))
    text = ir_text(module)
    assert parse_ir(text).is_structurally_equivalent(module)


def test_resnet18_imports_with_its_layer_structure() -> None:
    entry = zoo.get("resnet18")
    module = import_model(entry.build(), torch.randn(entry.input_shape))
    counts = op_counts(module)
    # 1 stem conv + 8 blocks x 2 convs + 3 downsample convs = 20 convs, each with a batch norm;
    # 17 ReLUs (stem + 2 per block), 8 residual adds, 1 max pool, 1 global pool, 1 fc.
    assert counts["qnn.conv2d"] == 20 and counts["qnn.batch_norm"] == 20
    assert (counts["qnn.relu"], counts["qnn.add"], counts["qnn.linear"]) == (17, 8, 1)
    assert (counts["qnn.max_pool2d"], counts["qnn.global_avg_pool"]) == (1, 1)
    paths = {op.path.data for op in _ops(module, QnnOp)}
    assert {"conv1", "layer1.0.conv1", "layer4.1.bn2", "layer2.0.downsample.0", "fc"} <= paths


def test_every_op_path_is_unique_and_names_module_calls() -> None:
    entry = zoo.get("resnet8")
    module = import_model(entry.build(), torch.randn(entry.input_shape))
    paths = [op.path.data for op in _ops(module, QnnOp)]
    assert len(paths) == len(set(paths))
    # The residual add is a functional call inside the block, named after the block.
    assert any(p.startswith("layer1.0/add") for p in paths)
    assert "layer1.0.relu2" in paths


class PaddedNet(nn.Module):
    """Explicit padding of every kind the frontend folds away."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))  # TF-style asymmetric "same" padding
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.same = nn.Conv2d(8, 8, 4, padding="same")
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.same(self.conv(self.pad(x)))
        y = self.pool(F.pad(y, (1, 0, 1, 0)))
        return self.avg(F.pad(y, (1, 1, 1, 1)))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_explicit_padding_folds_into_the_following_conv_and_pools() -> None:
    module = import_model(PaddedNet(), torch.randn(1, 3, 15, 15))
    conv, same = _ops(module, Conv2DOp)
    assert ints(conv.padding) == (0, 1, 0, 1)  # top, bottom, left, right
    # padding='same' with a 4x4 kernel: 3 pixels in total, the odd one at the bottom/right.
    assert ints(same.padding) == (1, 2, 1, 2)
    (pool,) = _ops(module, MaxPool2DOp)
    assert ints(pool.padding) == (1, 0, 1, 0) and pool.zero_pad is not None
    assert "constant_pad" not in ir_text(module)


class LopsidedPads(nn.Module):
    """F.pad with left != top and right != bottom before a conv, a max pool and an avg pool,
    so reading F.pad's (left, right, top, bottom) in another order changes the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.pad(x, (1, 2, 3, 0)))  # left 1, right 2, top 3, bottom 0
        y = F.max_pool2d(F.pad(y, (0, 1, 2, 0)), 2)  # left 0, right 1, top 2, bottom 0
        return F.avg_pool2d(F.pad(y, (2, 0, 0, 1)), 2, stride=1)  # left 2, bottom 1


def test_lopsided_f_pad_is_read_as_left_right_top_bottom_and_matches_torch() -> None:
    model = LopsidedPads().eval()
    x = torch.randn(1, 2, 7, 9, generator=torch.Generator().manual_seed(0))
    module = import_model(model, x)
    (conv,) = _ops(module, Conv2DOp)
    (pool,) = _ops(module, MaxPool2DOp)
    (avg,) = _ops(module, AvgPool2DOp)
    # qnn's padding is [top, bottom, left, right].
    assert ints(conv.padding) == (3, 0, 1, 2)
    assert ints(pool.padding) == (2, 0, 0, 1)
    assert ints(avg.padding) == (0, 1, 2, 0)
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = reference.run(module, x.numpy())
    assert got.shape == want.shape == (1, 4, 5, 6)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.features = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GELU(), nn.Hardswish())
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.features(self.conv(x))) * 2.0


def test_all_unsupported_ops_are_listed_at_once_with_module_paths() -> None:
    with pytest.raises(UnsupportedOpsError) as error:
        import_model(Unsupported(), torch.randn(1, 3, 8, 8))
    assert error.value.problems == [
        ("features.1", "aten.gelu"),
        ("features.2", "aten.hardswish"),  # reported by its own name, not its decomposition
        ("up", "aten.upsample_nearest2d"),
        ("mul_1", "aten.mul"),  # a functional call in the top-level forward: its node name
    ]
    assert "features.1: aten.gelu" in str(error.value)


class MisusedOps(nn.Module):
    """Supported ops used in ways dopant cannot import."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc3d = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = torch.add(y, y, alpha=2)
        y = F.avg_pool2d(y, 2, divisor_override=3)
        y = torch.clamp(y, min=-1.0)
        return self.fc3d(y.flatten(2)[:, :, :8])


def test_reasons_are_given_for_supported_ops_used_in_unsupported_ways() -> None:
    with pytest.raises(UnsupportedOpsError) as error:
        import_model(MisusedOps(), torch.randn(1, 3, 8, 8))
    assert error.value.problems == [
        ("add", "aten.add (add with alpha other than 1 is not supported)"),
        ("avg_pool2d", "aten.avg_pool2d (avg_pool2d with divisor_override is not supported)"),
        (
            "clamp",
            "aten.clamp (only clamps with two finite bounds, or a lower bound of 0, are supported)",
        ),
        ("slice_1", "aten.slice"),
        ("fc3d", "aten.linear (linear layers take [batch, features] input; flatten before them)"),
    ]


def test_a_wrong_input_shape_is_reported_with_the_shape() -> None:
    model = zoo.get("lenet5").build()
    with pytest.raises(InputError, match=r"input shape\(s\) \[1, 1, 32, 40\]: mat1 and mat2"):
        import_model(model, torch.randn(1, 1, 32, 40))


def test_non_float_inputs_are_refused() -> None:
    with pytest.raises(InputError, match=r"example input 0 has dtype torch\.int64"):
        import_model(zoo.get("mlp").build(), torch.zeros(1, 1, 28, 28, dtype=torch.long))


def test_weights_are_copied_exactly() -> None:
    model = zoo.get("lenet5").build()
    module = import_model(model, torch.randn(1, 1, 28, 28))
    fc = _ops(module, LinearOp)[-1]
    weight = fc.weight.owner.numpy()
    assert fc.weight.owner.path.data == "classifier.5.weight"
    assert torch.equal(torch.from_numpy(weight.copy()), model.classifier[5].weight.detach())


def test_a_model_in_training_is_imported_in_eval_mode_and_left_as_it_was() -> None:
    torch.manual_seed(0)
    model = zoo.get("resnet8").build()
    with torch.no_grad():  # running statistics of their own, so train and eval differ
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 1, 28, 28)
    expected = ir_text(import_model(model.eval(), x))
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    frozen.eval()  # a user's frozen batch norm stays frozen
    assert ir_text(import_model(model, x)) == expected
    assert model.training and not frozen.training
    assert all(m.training for m in model.modules() if m is not frozen)
