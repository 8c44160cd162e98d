"""Latency in the training loss against pruning after training, on Fashion-MNIST: ResNet-8 on
edge16 at budgets of 70/50/30% of the dense W8A8 network's measured cycles.

    python benchmarks/latency_training.py [--budgets 0.7,0.5,0.3] [--epochs 2] [--csv FILE]
    python benchmarks/latency_training.py --report FILE     # the table and plot of finished rows

Arms, from the shipped (trained) ResNet-8, all W8A8, all at the channel step 4 (the grid of the
latency table and of the selector):
  trained  latency in the loss (`dopant.codesign.training`): one sigmoid gate per channel of every
           prunable coupling group, trained with the model for `--epochs` epochs on cross entropy
           + weight * relu(E[cycles] / budget - 1), E from the LUT (the table corrected by the
           dense network's measured cycles); then the gates become a plan (`finalize`), the
           pruned model gets the one-epoch fine-tune every arm gets, and is quantized and
           measured. The budget is the training target; nothing moves it after a measurement.
  after    pruning after training (the previous issue's arm (b)): `codesign(prune=True,
           bits=False)` selects channels by SOSP-H under the *measured* budget (rounds until it
           lands within 2% under it), then the pruned model is fine-tuned for `--epochs` + 1
           epochs: the same number of training epochs as `trained` in all.
Data: the first `--finetune` training images for every epoch (dopant's augmentation), the 512
shipped images for calibration and saliency, top-1 of the integer network on the 10k test set
(`codesign_setup.evaluate`: FakeQuantNetwork, checked against the integer reference). Cycles are
the timing model's (equal to the compiled binary's), FPS at the preset's clock.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from codesign_setup import RESULTS, Data, evaluate, finetune, macs_of, quantized
from csv_rows import append_row, read_rows
from threadpoolctl import threadpool_limits
from torch import nn

from dopant.backend.presets import load_target
from dopant.codesign import codesign
from dopant.codesign.finish import torch_top1
from dopant.codesign.training import ChannelGates, LatencyLoss, LatencyLUT, finalize
from dopant.compiler.driver import latency
from dopant.compiler.models.datasets import Dataset, load_fashion_mnist, load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.compiler.models.train import augment_batch, train

TARGET = "edge16"
STEP = 4
GATE_LR, MODEL_LR, MOMENTUM = 0.03, 0.01, 0.9
INIT_LOGIT = 2.0  # sigmoid(2) = 0.88: every channel on, a few dozen Adam steps from 0.5
PENALTY_WEIGHT = 5.0  # the hinge's weight: 5% over the budget costs 0.25, about the task loss
FIELDS = (
    "arm",
    "budget",
    "budget_cycles",
    "cycles",
    "fps",
    "macs",
    "acc",
    "acc_float",
    "expected_cycles",
    "table_cycles",
    "kept",
    "train_s",
    "wall_s",
)


def train_with_latency(
    model: nn.Module, lut: LatencyLUT, data: Dataset, budget_cycles: float, epochs: int
) -> tuple[ChannelGates, LatencyLoss]:
    """The gates and the model trained together on the task loss and the budget hinge."""
    gates = ChannelGates(model, lut, init_logit=INIT_LOGIT)
    objective = LatencyLoss(lut, budget_cycles, gates=gates, weight=PENALTY_WEIGHT)
    model_opt = torch.optim.SGD(model.parameters(), lr=MODEL_LR, momentum=MOMENTUM)
    gate_opt = torch.optim.Adam(gates.parameters(), lr=GATE_LR)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(1, epochs + 1):
        for x, y in data.batches(128, shuffle=True, seed=epoch):
            images = augment_batch(torch.from_numpy(x), generator)
            loss = objective(F.cross_entropy(model(images), torch.from_numpy(y.astype(np.int64))))
            model_opt.zero_grad()
            gate_opt.zero_grad()
            loss.backward()
            model_opt.step()
            gate_opt.step()
        print(f"  epoch {epoch}: {objective.last}", flush=True)
    model.eval()
    return gates, objective


def trained_arm(data: Data, lut: LatencyLUT, fraction: float, epochs: int) -> dict[str, object]:
    start = time.perf_counter()
    model = load_pretrained("resnet8")
    budget = fraction * lut.dense_cycles
    gates, _ = train_with_latency(model, lut, data.tune, budget, epochs)
    train_s = time.perf_counter() - start
    result = finalize(model, data.example, lut, gates=gates, calibration=data.calibration.x)
    pruned = result.model
    finetune(pruned, data.tune)
    q = quantized(pruned, data)
    cycles = latency(q, lut.config).total_cycles
    wall = time.perf_counter() - start
    acc, _ = evaluate(q, data.test)
    sizes = {g: lut.groups[g].size for g in result.kept}
    return {
        "cycles": cycles,
        "macs": macs_of(pruned, data),
        "acc": acc,
        "acc_float": torch_top1(pruned, (data.test.x, data.test.y)),
        "expected_cycles": round(result.expected_cycles),
        "table_cycles": round(result.table_cycles),
        "kept": " ".join(f"{result.kept[g]}/{sizes[g]}" for g in result.kept),
        "train_s": train_s,
        "wall_s": wall,
    }


def after_arm(data: Data, fraction: float, epochs: int) -> dict[str, object]:
    start = time.perf_counter()
    train_s = 0.0

    def tune(model: nn.Module) -> None:
        nonlocal train_s
        began = time.perf_counter()
        train(model, data.tune, epochs=epochs + 1, lr=MODEL_LR)
        train_s = time.perf_counter() - began

    result = codesign(
        load_pretrained("resnet8"),
        data.example,
        target=TARGET,
        calibration=data.calibration.x,
        latency_budget=f"{fraction}x",
        bits=False,
        finetune=tune,
        batches=data.batches,
        step=STEP,
        log=lambda line: print(f"  {line}", flush=True),
    )
    wall = time.perf_counter() - start
    acc, _ = evaluate(result.stages["quantized"], data.test)
    kept = {g.id: len(g.keep) for g in result.plan.groups} if result.plan is not None else {}
    return {
        "cycles": result.cycles,
        "macs": macs_of(result.model, data),
        "acc": acc,
        "acc_float": torch_top1(result.model, (data.test.x, data.test.y)),
        "kept": " ".join(f"{k}" for k in kept.values()),
        "train_s": train_s,
        "wall_s": wall,
    }


def report(rows: list[dict[str, str]], plot_path: Path) -> None:
    print(
        "\n| budget | arm | cycles (% of budget) | FPS | MACs | top-1 int | top-1 float |"
        " expected / table cycles | kept |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (-float(r["budget"]), r["arm"])):
        share = int(r["cycles"]) / float(r["budget_cycles"])
        predicted = (
            f"{int(r['expected_cycles']):,} / {int(r['table_cycles']):,}"
            if r["expected_cycles"]
            else ""
        )
        print(
            f"| {float(r['budget']):.0%} | {r['arm']} | {int(r['cycles']):,} ({share:.1%}) | "
            f"{float(r['fps']):,.0f} | {int(r['macs']):,} | {float(r['acc']):.2%} | "
            f"{float(r['acc_float']):.2%} | {predicted} | {r['kept']} |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, marker in (("trained", "o"), ("after", "s")):
        points = sorted((float(r["fps"]), float(r["acc"])) for r in rows if r["arm"] == arm)
        label = "latency in the loss" if arm == "trained" else "pruned after training (SOSP-H)"
        if points:
            ax.plot(*zip(*points, strict=False), marker=marker, label=label)
    for r in rows:
        if r["arm"] == "dense":
            ax.scatter(
                [float(r["fps"])],
                [float(r["acc"])],
                marker="*",
                s=120,
                c="k",
                label="dense W8A8 (no fine-tune)",
            )
    ax.set_xlabel(f"measured FPS on {TARGET}")
    ax.set_ylabel("top-1, integer network, 10k test")
    ax.set_title("ResNet-8 on Fashion-MNIST at 70/50/30% of the dense latency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path, dpi=120)
    print(f"plot: {plot_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgets", default="0.7,0.5,0.3")
    parser.add_argument("--arms", default="trained,after")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of training with the gates")
    parser.add_argument("--finetune", type=int, default=10000, help="training images")
    parser.add_argument("--test", type=int, default=10000, help="test images (smoke runs)")
    parser.add_argument("--csv", default=str(RESULTS / "latency_training.csv"))
    parser.add_argument("--plot", default=str(RESULTS / "latency_training.png"))
    parser.add_argument("--report", action="store_true", help="print and plot the CSV only")
    args = parser.parse_args()
    out = Path(args.csv)
    config = load_target(TARGET)
    if args.report:
        report(read_rows(out), Path(args.plot))
        return
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    calibration = load_sample()[0]
    train_set, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    data = Data(calibration, train_set.subset(args.finetune), test.subset(args.test))
    done = {(r["arm"], r["budget"]) for r in read_rows(out)}
    with threadpool_limits(limits=1, user_api="blas"):
        lut = LatencyLUT.of(
            load_pretrained("resnet8"), data.example, TARGET, bits=False, step=STEP, progress=True
        )
        print(lut, flush=True)
        if ("dense", "1.0") not in done:
            q = quantized(load_pretrained("resnet8"), data)
            acc, _ = evaluate(q, data.test)
            row = {"arm": "dense", "budget": "1.0", "budget_cycles": lut.dense_cycles}
            row.update(cycles=lut.dense_cycles, macs=macs_of(load_pretrained("resnet8"), data))
            row.update(
                acc=acc,
                acc_float=torch_top1(load_pretrained("resnet8"), (data.test.x, data.test.y)),
            )
            row["fps"] = config.clock_mhz * 1e6 / lut.dense_cycles
            append_row(out, FIELDS, row)
        for fraction in args.budgets.split(","):
            for arm in args.arms.split(","):
                if (arm, fraction) in done:
                    continue
                print(f"{arm} at {fraction}x", flush=True)
                f = float(fraction)
                row = (
                    trained_arm(data, lut, f, args.epochs)
                    if arm == "trained"
                    else after_arm(data, f, args.epochs)
                )
                row.update(arm=arm, budget=fraction, budget_cycles=round(f * lut.dense_cycles))
                row["fps"] = config.clock_mhz * 1e6 / int(row["cycles"])
                append_row(out, FIELDS, row)
                print(f"  {row}", flush=True)
    report(read_rows(out), Path(args.plot))


if __name__ == "__main__":
    main()
