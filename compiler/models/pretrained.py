"""Zoo models with weights trained on Fashion-MNIST, shipped in `compiler/models/data/`.

The weights come from `benchmarks/train_fashion.py` (the recipe in
`dopant.compiler.models.train`) on the full 60k-image train split; the README's training table
gives their test accuracy. They make quantization and pruning results meaningful: an untrained
network has no accuracy to lose.
"""

from __future__ import annotations

from torch import nn

from dopant.compiler.models import zoo
from dopant.compiler.models.datasets import data_file
from dopant.compiler.models.weights import load_weights_bytes
from dopant.support.errors import InputError

PRETRAINED = {"lenet5": "lenet5_fashion.npz", "resnet8": "resnet8_fashion.npz"}
"""Zoo name -> weights file in `dopant.compiler`'s data folder."""

INPUT_SHAPE = (1, 1, 28, 28)  # Fashion-MNIST, one image


def load_pretrained(name: str) -> nn.Module:
    """The zoo model `name` for 1x28x28 inputs with its shipped Fashion-MNIST weights, in eval
    mode."""
    if name not in PRETRAINED:
        raise InputError(
            f"there are no pretrained weights for '{name}'; available: {', '.join(PRETRAINED)}."
        )
    return load_pretrained_into(name, zoo.get(name).build(INPUT_SHAPE)).eval()


def load_pretrained_into(name: str, model: nn.Module) -> nn.Module:
    """Load the shipped weights of zoo model `name` into `model` (built by the zoo, perhaps for
    another input shape); InputError if they do not fit it."""
    file = PRETRAINED[name]
    return load_weights_bytes(model, data_file(file), f"dopant's shipped weights '{file}'")
