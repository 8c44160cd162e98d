"""QAT benchmark: post-training quantization versus fine-tuning the fake-quant network (LSQ
steps) and handing it back to the compiler, on Fashion-MNIST with the shipped LeNet-5.

    python benchmarks/qat.py [--epochs 3] [--train 20000]

For each setting: PTQ accuracy of the integer reference, then `FakeQuantNetwork(q)` fine-tuned
for `--epochs` on `--train` training images, exported (`.export()`) and evaluated again on the
integer reference (the full 10k test set). Data: Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import time

import torch
from threadpoolctl import threadpool_limits

from dopant.compiler.driver import CANONICAL_PIPELINE, quantize_network
from dopant.compiler.evaluate import accuracy
from dopant.compiler.fakequant import FakeQuantNetwork, finetune
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import load_fashion_mnist, load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.compiler.pipeline import run_pipeline

SETTINGS = {
    "W4A4": {"weight_bits": 4, "act_bits": 4, "weight_clip": "mse"},
    "W2A8": {"weight_bits": 2, "act_bits": 8, "weight_clip": "mse"},
    "W2A4": {"weight_bits": 2, "act_bits": 4, "weight_clip": "mse"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train", type=int, default=20000, help="training images for QAT")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    calibration = load_sample()[0].x
    train = load_fashion_mnist("train").subset(args.train)
    test = load_fashion_mnist("test")
    module = import_model(load_pretrained(args.model), torch.from_numpy(calibration[:1]))
    run_pipeline(module, CANONICAL_PIPELINE)
    print(
        f"# {args.model}: float {accuracy(module, test.x, test.y):.2%} on {len(test)} test "
        f"images; QAT: {args.epochs} epochs on {len(train)} training images, Adam lr "
        f"{args.lr}\n"
    )
    print("| setting | PTQ (MSE calibration) | QAT, exported | QAT time s |")
    print("|---|---|---|---|")
    for name, options in SETTINGS.items():
        q = quantize_network(module, calibration, method="mse", **options)
        ptq = accuracy(q, test.x, test.y)
        start = time.perf_counter()
        network = FakeQuantNetwork(q)
        finetune(network, train.x, train.y, epochs=args.epochs, lr=args.lr)
        exported = network.export()
        seconds = time.perf_counter() - start
        print(
            f"| {name} | {ptq:.2%} | {accuracy(exported, test.x, test.y):.2%} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    with threadpool_limits(limits=1, user_api="blas"):
        main()
