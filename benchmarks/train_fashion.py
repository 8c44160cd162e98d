"""Train a zoo model on the full Fashion-MNIST train set and write the weights dopant ships.

    python benchmarks/train_fashion.py --model lenet5 --epochs 30 \\
        --out compiler/models/data/lenet5_fashion.npz
    python benchmarks/train_fashion.py --model resnet8 --epochs 20 \\
        --out compiler/models/data/resnet8_fashion.npz

Prints one row per epoch (mean training loss and accuracy on augmented batches, accuracy on the
full 10k test set, seconds including that evaluation) and the total wall time. The recipe is
`dopant.compiler.models.train.train` with its defaults; data from Debian's dataset-fashion-mnist.
Runs with 2 torch threads (the 2-core development VM).
"""

from __future__ import annotations

import argparse
import platform

import torch

from dopant.compiler.models.train import main_train


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or the platform's guess elsewhere."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, choices=("lenet5", "resnet8"))
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", required=True, help="weights .npz to write")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"# {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    main_train(f"zoo:{args.model}", args.epochs, args.out)


if __name__ == "__main__":
    main()
