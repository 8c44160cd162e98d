"""Quantization benchmark on Fashion-MNIST: test accuracy of LeNet-5 and ResNet-8 in float and
quantized (W8A8, W4A8, W4A4, W2A8) per calibration method, the integer reference next to the
fake-quant (QAT) model built from the same parameters, and per-layer output SNR.

    python benchmarks/quantization.py [--models lenet5,resnet8] [--limit 10000]

Weights: the networks shipped in compiler/data (trained by benchmarks/train_fashion.py). Data:
Debian's dataset-fashion-mnist (`apt-get install -y dataset-fashion-mnist`); calibration uses
512 training images (the shipped sample), accuracy the full 10k test set.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dopant.compiler.driver import CANONICAL_PIPELINE, quantize_network
from dopant.compiler.evaluate import accuracy, layer_snr
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import load_fashion_mnist, load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.compiler.pipeline import run_pipeline

CONFIGS = {  # name -> QuantizePass options; sub-8-bit weights use MSE-optimal clipping
    "W8A8": {"weight_bits": 8, "act_bits": 8},
    "W4A8": {"weight_bits": 4, "act_bits": 8, "weight_clip": "mse"},
    "W4A4": {"weight_bits": 4, "act_bits": 4, "weight_clip": "mse"},
    "W2A8": {"weight_bits": 2, "act_bits": 8, "weight_clip": "mse"},
}
METHODS = ("minmax", "percentile", "mse")


def fake_quant_accuracy(quantized: object, x: np.ndarray, y: np.ndarray) -> float:
    network = FakeQuantNetwork(quantized).eval()  # type: ignore[arg-type]
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), 500):
            logits = network(torch.from_numpy(x[start : start + 500]))
            correct += int((logits.argmax(1).numpy() == y[start : start + 500]).sum())
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="lenet5,resnet8")
    parser.add_argument("--limit", type=int, default=10000, help="test images to use")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    calibration = load_sample()[0].x
    test = load_fashion_mnist("test").subset(args.limit)
    print(f"# Fashion-MNIST: {len(calibration)} calibration images, {len(test)} test images")
    for name in args.models.split(","):
        start = time.perf_counter()
        model = load_pretrained(name)
        module = import_model(model, torch.from_numpy(calibration[:1]))
        run_pipeline(module, CANONICAL_PIPELINE)
        float_acc = accuracy(module, test.x, test.y)
        print(f"\n## {name}: float {float_acc:.2%}  (integer ref / fake-quant model)\n")
        print("| calibration | " + " | ".join(CONFIGS) + " |")
        print("|---|" + "---|" * len(CONFIGS))
        snr_rows: dict[str, list[tuple[str, float]]] = {}
        for method in METHODS:
            cells = []
            for config, options in CONFIGS.items():
                q = quantize_network(module, calibration, method=method, **options)
                int_acc = accuracy(q, test.x, test.y)
                fq_acc = fake_quant_accuracy(q, test.x, test.y)
                cells.append(f"{int_acc:.2%} / {fq_acc:.2%}")
                if method == "mse" and config in ("W8A8", "W4A8"):
                    snr_rows[config] = layer_snr(module, q, test.x[:256])
            print(f"| {method} | " + " | ".join(cells) + " |", flush=True)
        print("\nper-layer output SNR (dB, MSE calibration, 256 test images):\n")
        print("| layer | " + " | ".join(snr_rows) + " |")
        print("|---|" + "---|" * len(snr_rows))
        paths = [p for p, _ in next(iter(snr_rows.values()))]
        for i, path in enumerate(paths):
            print(
                f"| {path} | "
                + " | ".join(f"{rows[i][1]:.1f}" for rows in snr_rows.values())
                + " |"
            )
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    with threadpool_limits(limits=1, user_api="blas"):
        main()
