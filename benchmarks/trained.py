"""Zoo models trained on Fashion-MNIST for the benchmarks, cached on disk.

    python benchmarks/trained.py --models resnet20,mobilenetv2 [--epochs 5]

ResNet-8 and LeNet-5 ship trained (compiler/models/data); other zoo models are trained here
once with dopant's recipe (`dopant.compiler.models.train.train`, its defaults) on the full
Fashion-MNIST train set (Debian's dataset-fashion-mnist) at 1x28x28 and cached in
`benchmarks/.cache/NAME_fashion_EPOCHSep.npz`; later runs load the file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from dopant.compiler.models import zoo
from dopant.compiler.models.datasets import load_fashion_mnist
from dopant.compiler.models.pretrained import PRETRAINED, load_pretrained
from dopant.compiler.models.train import TABLE_HEADER, train
from dopant.compiler.models.weights import load_weights, save_weights

CACHE = Path(__file__).resolve().parent / ".cache"
INPUT_SHAPE = (1, 1, 28, 28)


def trained(name: str, epochs: int = 5) -> nn.Module:
    """The zoo model `name` trained on Fashion-MNIST: shipped weights, the cache, or trained now."""
    if name in PRETRAINED:
        return load_pretrained(name)
    model = zoo.get(name).build(INPUT_SHAPE, num_classes=10)
    path = CACHE / f"{name}_fashion_{epochs}ep.npz"
    if path.is_file():
        return load_weights(model, path).eval()
    train_set, test_set = load_fashion_mnist("train"), load_fashion_mnist("test")
    print(f"# training {name} for {epochs} epochs (cached in {path})")
    print(TABLE_HEADER)
    start = time.perf_counter()
    train(model, train_set, epochs=epochs, test=test_set, log=print)
    print(f"# {name}: {time.perf_counter() - start:.0f} s")
    CACHE.mkdir(exist_ok=True)
    save_weights(model, path)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    for name in args.models.split(","):
        trained(name, args.epochs)


if __name__ == "__main__":
    main()
