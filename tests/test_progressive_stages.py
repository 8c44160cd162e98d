"""The pieces of progressive compression: the schedule's grammar and its bad input, batch norms
folded in torch as `fold-batchnorm` folds them in IR, and a stage started where the last one
ended (exactly, when its widths are unchanged)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from dopant.backend.presets import preset
from dopant.codesign._progressive.carry import Carried, carry, with_weights, write_back
from dopant.codesign._progressive.fold import fold_batchnorms
from dopant.codesign.progressive import parse_schedule
from dopant.codesign.threads import one_thread
from dopant.compiler.driver import quantize_network
from dopant.compiler.evaluate import BatchedRunner
from dopant.compiler.fakequant import FakeQuantNetwork, finetune
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.compiler.pipeline import run_pipeline
from dopant.support.errors import InputError

EDGE16 = preset("edge16")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():  # as progressive() trains
        yield


def test_a_schedule_has_widths_and_cumulative_pruning_targets() -> None:
    stages = parse_schedule(" w8a8, W4A8+macs=0.3 ,macs=0.5,w2a4", EDGE16)
    assert [str(s) for s in stages] == [
        "w8a8",
        "w4a8+macs=0.3",
        "w4a8+macs=0.5",  # a stage without widths keeps the last ones
        "w2a4+macs=0.5",  # a target stays in force
    ]
    assert parse_schedule(stages, EDGE16) == stages
    assert str(parse_schedule("params=0.2", EDGE16)[0]) == "w8a8+params=0.2"


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (
            "w8a8,w3a8",
            "stage 2 'w3a8' asks for 3-bit weights, but the target 'edge16' has 2, 4, 8-bit "
            "weight lanes",
        ),
        (
            "w4a4,w8a4",
            "stage 2 'w8a4' raises the weight width from 4 bits (stage 1 'w4a4') to 8; widths "
            "in a progressive schedule only go down",
        ),
        ("w8a4,w4a8", "stage 2 'w4a8' raises the activation width from 4 bits"),
        ("w8a8+macs=0.5,w4a8+macs=0.3", "stage 2 'w4a8+macs=0.3' removes less (macs=0.3) than"),
        ("macs=0.3,params=0.5", "stage 2 'params=0.5' prunes by parameters but stage 1"),
        ("w8a8,w4b4", "stage 2 'w4b4' is not understood: write wXaY"),
        ("w8a8,w4a4w2a2", "stage 2 'w4a4w2a2' is not understood"),
        ("w8a8+w4a4", "stage 1 'w8a8+w4a4' is not understood"),
        ("w8a8,,w4a4", "stage 2 of the schedule is empty"),
        (" ", "the schedule is empty"),
        ("w8a8+macs=1.5", "stage 1 'w8a8+macs=1.5': pruning target macs=1.5 is outside (0, 1)"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_stage(schedule: str, message: str) -> None:
    with pytest.raises(InputError) as error:
        parse_schedule(schedule, EDGE16)
    assert message in str(error.value)


def test_a_width_the_target_lacks_is_refused_with_what_it_has() -> None:
    no_two = EDGE16.with_changes(name="no2", weight_bits=(4, 8), act_bits=(4, 8))
    with pytest.raises(
        InputError,
        match=r"stage 3 'w4a2' asks for 2-bit activations, but the "
        r"target 'no2' has 4, 8-bit activation lanes",
    ):
        parse_schedule("w8a8,w4a4,w4a2", no_two)
    with pytest.raises(InputError, match="asks for 2-bit weights"):
        parse_schedule("w8a8", no_two, first_last_bits=2)


class _Residual(nn.Module):
    """conv-bn-relu, conv-bn added to the input, a linear layer: norms to fold and one that
    cannot be folded into anything but its conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.block(y) + y)
        return self.fc(torch.flatten(y, 1))


def test_batch_norms_fold_in_torch_as_the_pass_folds_them_in_ir() -> None:
    torch.manual_seed(0)
    model = _Residual().eval()
    for norm in (model.bn1, model.block[1]):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(8, 3, 6, 6)
    imported = import_model(model, x[:1])
    folded = fold_batchnorms(model, imported)

    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(model.bn1, nn.BatchNorm2d), "the model itself is left as it was"
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    # The pass's fold of the IR, given the torch model's weights, is the folded model's import.
    by_pass = imported.clone()
    run_pipeline(by_pass, "fold-batchnorm")
    reimported = BatchedRunner(import_model(folded, x[:1])).run(x.numpy())
    assert np.array_equal(BatchedRunner(with_weights(by_pass, folded)).run(x.numpy()), reimported)


def test_a_stage_starts_where_the_last_one_ended() -> None:
    """Unchanged widths: the new network is the last one, exactly. Lower weight widths: the
    latent weights and activation steps go on, the weight steps start afresh."""
    train = load_sample()[0].subset(128)
    model = load_pretrained("lenet5")
    imported = import_model(model, torch.from_numpy(train.x[:1]))
    folded = fold_batchnorms(model, imported)

    def network(weight_bits: int, act_bits: int) -> FakeQuantNetwork:
        ir = with_weights(imported, folded)
        return FakeQuantNetwork(
            quantize_network(ir, train.x, weight_bits=weight_bits, act_bits=act_bits)
        )

    last = network(4, 4)
    fresh = ir_text(last.export())
    finetune(last, train.x, train.y, epochs=1, lr=1e-3, batch_size=64)
    ended = ir_text(last.export())
    assert ended != fresh, "training moved the network"
    write_back(last, folded)
    for key, path in last.layer_paths().items():
        learned = last.layers[key].weight.detach().float()
        assert torch.equal(folded.get_submodule(path).weight, learned)

    same = network(4, 4)
    assert carry(last, same) == Carried(5, 5, 6, 5, 6)
    assert ir_text(same.export()) == ended

    lower = network(2, 4)
    assert carry(last, lower) == Carried(5, 0, 6, 5, 6)
    for key in last.layers:
        assert torch.equal(lower.layers[key].weight, last.layers[key].weight)
        assert not torch.equal(lower.layers[key].weight_step, last.layers[key].weight_step)
    for key in last.steps:
        assert torch.equal(lower.steps[key], last.steps[key])
