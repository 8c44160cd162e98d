"""End to end float semantics: every zoo model, imported and run on the reference interpreter,
equals torch to 1e-5 of the output scale, before and after the float pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dopant.compiler.frontend import import_model
from dopant.compiler.models import zoo
from dopant.compiler.pipeline import run_pipeline
from dopant.compiler.summary import op_counts
from dopant.runtime import reference

TOLERANCE = 1e-5  # max abs error relative to the largest output magnitude (issue #2)


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics, so folding it is really tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.3)
    return model


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_matches_torch_before_and_after_the_float_pipeline(name: str) -> None:
    entry = zoo.get(name)
    model = randomize_batch_norms(entry.build())
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(entry.input_shape, generator=generator) for _ in range(2)]
    module = import_model(model, inputs[0])
    with torch.no_grad():
        expected = [model(x).numpy() for x in inputs]
    for x, want in zip(inputs, expected, strict=True):
        (got,) = reference.run(module, x.numpy())
        assert relative_error(got, want) <= TOLERANCE

    run_pipeline(module, "fold-batchnorm{strict=true},fuse-activation")
    counts = op_counts(module)
    assert counts["qnn.batch_norm"] == 0
    for x, want in zip(inputs, expected, strict=True):
        (got,) = reference.run(module, x.numpy())
        assert relative_error(got, want) <= TOLERANCE


class Padded(nn.Module):
    """Explicit zero padding that the frontend folds into convs and pools."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.same = nn.Conv2d(8, 8, 4, padding="same", dilation=1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(3, stride=1, count_include_pad=False)  # no own padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.same(self.conv(self.pad(x)))
        y = self.pool(nn.functional.pad(y, (1, 0, 1, 0)))  # zeros beat negatives at the border
        return self.avg(nn.functional.pad(y, (2, 2, 2, 2)))  # padded zeros count


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_folded_padding_keeps_torch_semantics() -> None:
    model = Padded().eval()
    x = torch.randn(2, 3, 15, 15, generator=torch.Generator().manual_seed(0))
    module = import_model(model, x)
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = reference.run(module, x.numpy())
    assert got.shape == want.shape
    assert relative_error(got, want) <= TOLERANCE
