"""A model put in eval mode for a while, every module's train/eval flag restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block (batch norms on their running statistics, no
    dropout); after it, even on error, each module's own flag as it was, so a model in
    training with a frozen batch norm inside comes back the same."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training  # not .train(): that would reset the children too
