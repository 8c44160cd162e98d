"""Structured pruning benchmark on Fashion-MNIST: accuracy, MACs, parameters and measured cycles
of networks pruned by each saliency method to 30, 50, 70 and 90% fewer MACs.

    python benchmarks/pruning.py [--models resnet8,resnet20,mobilenetv2]
        [--methods magnitude,taylor,sosp-h,sosp-i] [--targets 0.3,0.5,0.7,0.9]
        [--finetune 10000] [--plot benchmarks/results/pruning.png]

For each model (ResNet-8 shipped; ResNet-20 and MobileNetV2 trained by benchmarks/trained.py,
cached) and method: one saliency computation on 512 training images (8 batches of 64; the
seconds are reported), then for each target the global selection (`target=macs=F`), the
pruned torch module (`prune_module`), its test accuracy on the full 10k test set right after
pruning and after the same short fine-tune for every method (one epoch over the first
`--finetune` training images, dopant's recipe at peak lr 0.01), its parameters and MACs, and
the edge16 W8A8 cycles: the fine-tuned network imported, calibrated on the shipped 512-image
sample, quantized and costed by the latency oracle (`dopant.compiler.latency`, whose cycles
equal the compiled binary's). Rows are appended to a CSV as they finish, so an interrupted run
resumes. Data: Debian's dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from csv_rows import append_row, read_rows
from threadpoolctl import threadpool_limits
from torch import nn
from trained import INPUT_SHAPE, trained

from dopant.codesign import PruningPlan, group_saliency, prune_module, select_channels
from dopant.codesign.pruning import Costs
from dopant.compiler.driver import CANONICAL_PIPELINE, latency, quantize_network
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import Dataset, load_fashion_mnist, load_sample
from dopant.compiler.models.train import accuracy, train
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn.base import forward
from dopant.passes._prune_channels.costs import layer_shapes
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.support.errors import InputError

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = (
    "model",
    "method",
    "target",
    "macs",
    "params",
    "cycles",
    "acc_pruned",
    "acc_finetuned",
    "saliency_s",
)


def cycles_w8a8(model: nn.Module, calibration: np.ndarray) -> int:
    """edge16 W8A8 cycles of `model`: imported, calibrated, quantized, costed by the oracle."""
    module = import_model(model, torch.from_numpy(calibration[:1]))
    run_pipeline(module, CANONICAL_PIPELINE)
    quantized = quantize_network(module, calibration, weight_bits=8, act_bits=8)
    return latency(quantized, "edge16").total_cycles


def macs_params(model: nn.Module) -> tuple[int, int]:
    costs = Costs.of(import_model(model, torch.zeros(INPUT_SHAPE)))
    return costs.macs, costs.params


def finetuned(model: nn.Module, data: Dataset) -> nn.Module:
    tuned = copy.deepcopy(model)
    train(tuned, data, epochs=1, lr=0.01)
    return tuned


def saliency_batches(data: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data.subset(512).batches(64)]


def done_rows(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    return {(r["model"], r["method"], r["target"]): r for r in read_rows(path)}


def run_model(
    name: str,
    methods: list[str],
    targets: list[float],
    data: tuple[Dataset, Dataset, Dataset, np.ndarray],
    out: Path,
) -> None:
    train_set, tune_set, test, calibration = data
    model = trained(name)
    done = done_rows(out)
    if (name, "dense", "0") not in done:
        macs, params = macs_params(model)
        acc = accuracy(model, test)
        cycles = cycles_w8a8(model, calibration)
        row = (name, "dense", 0, macs, params, cycles, acc, acc, 0)
        append_row(out, FIELDS, dict(zip(FIELDS, row, strict=True)))
    module = import_model(model, torch.from_numpy(calibration[:1]))
    groups = coupling_groups(module)
    layers = layer_shapes(forward(module, "to count"))
    batches = saliency_batches(train_set)
    for method in methods:
        if all((name, method, str(t)) in done for t in targets):
            continue
        start = time.perf_counter()
        try:
            scores = group_saliency(model, groups, batches, method=method)
        except InputError as error:
            print(f"{name} {method}: skipped ({error})", flush=True)
            continue
        seconds = time.perf_counter() - start
        for target in targets:
            if (name, method, str(target)) in done:
                continue
            keep = select_channels(groups, scores, f"macs={target}", layers=layers)
            pruned = prune_module(copy.deepcopy(model), PruningPlan.make(groups, keep))
            macs, params = macs_params(pruned)
            acc = accuracy(pruned, test)
            tuned = finetuned(pruned, tune_set)
            tuned_acc = accuracy(tuned, test)
            cycles = cycles_w8a8(tuned, calibration)
            row = (name, method, target, macs, params, cycles, acc, tuned_acc, seconds)
            append_row(out, FIELDS, dict(zip(FIELDS, row, strict=True)))
            print(f"{name} {method} {target:.0%}: {acc:.2%} -> {tuned_acc:.2%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet8,resnet20,mobilenetv2")
    parser.add_argument("--methods", default="magnitude,taylor,sosp-h,sosp-i")
    parser.add_argument("--targets", default="0.3,0.5,0.7,0.9")
    parser.add_argument("--finetune", type=int, default=10000, help="training images")
    parser.add_argument("--csv", default=str(RESULTS / "pruning.csv"))
    parser.add_argument("--plot", default=str(RESULTS / "pruning.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    train_set, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    data = (train_set, train_set.subset(args.finetune), test, load_sample()[0].x)
    out = Path(args.csv)
    with threadpool_limits(limits=1, user_api="blas"):
        for name in args.models.split(","):
            run_model(
                name,
                args.methods.split(","),
                [float(t) for t in args.targets.split(",")],
                data,
                out,
            )
    rows = list(done_rows(out).values())
    print_table(rows)
    plot(rows, Path(args.plot))


def print_table(rows: list[dict[str, str]]) -> None:
    """One markdown table: every row against its model's dense network."""
    dense = {r["model"]: r for r in rows if r["method"] == "dense"}
    print(
        "\n| model | method | target | MACs | params | edge16 W8A8 cycles | speed-up | "
        "top-1 pruned | top-1 fine-tuned | saliency s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = dense[r["model"]]
        macs = int(r["macs"]) / int(base["macs"])
        speedup = int(base["cycles"]) / int(r["cycles"])
        print(
            f"| {r['model']} | {r['method']} | {float(r['target']):.0%} | "
            f"{int(r['macs']):,} ({macs:.0%}) | {int(r['params']):,} | {int(r['cycles']):,} | "
            f"{speedup:.2f}x | {float(r['acc_pruned']):.2%} | {float(r['acc_finetuned']):.2%} | "
            f"{float(r['saliency_s']):.1f} |"
        )


def plot(rows: list[dict[str, str]], path: Path) -> None:
    """Fine-tuned accuracy against MACs and against measured cycles, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    models = list(dict.fromkeys(r["model"] for r in rows))  # in the order they ran
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.6 * len(models)), squeeze=False)
    for ax_row, name in zip(axes, models, strict=True):
        mine = [r for r in rows if r["model"] == name]
        for method in sorted({r["method"] for r in mine} - {"dense"}):
            points = sorted(
                (r for r in mine if r["method"] in (method, "dense")),
                key=lambda r: -int(r["macs"]),
            )
            for ax, key in zip(ax_row, ("macs", "cycles"), strict=True):
                xs = [int(r[key]) for r in points]
                ys = [100 * float(r["acc_finetuned"]) for r in points]
                ax.plot(xs, ys, marker="o", label=method)
        for ax, label in zip(ax_row, ("MACs", "edge16 W8A8 cycles"), strict=True):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # the minor labels overlap
            ax.set_xlabel(label)
            ax.set_ylabel("top-1 after fine-tune (%)")
            ax.set_title(name)
            ax.grid(alpha=0.3)
        ax_row[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
