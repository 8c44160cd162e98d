"""Progressive compression and stage-by-stage PTQ with distillation, on Fashion-MNIST: does the
seed's claim hold here (smaller drops between stages, shorter training, higher final accuracy
than one step)?

    python benchmarks/progressive.py [--models lenet5,resnet8] [--bits w4a4,w2a4] [--train 1024]
        [--epochs 1] [--test 10000] [--csv FILE]
    python benchmarks/progressive.py --report FILE,...    # the tables of finished rows

For each model (shipped Fashion-MNIST weights) and final width, four arms at equal data (the first
`--train` training images) and equal epochs (T = `--epochs` x the schedule's stages):
  (i)   one-jump   QAT at the final widths from the float model, T epochs (`one_jump`)
  (ii)  progressive  w8a8 -> w4a8 -> w4a4 (-> w2a4), `--epochs` of QAT per stage, each started
                   from the last (`progressive`); the drop at each stage is recorded
  (iii) stage-wise PTQ-KD  the integer network cut into stages (ResNet-8: its residual stages;
                   LeNet-5: 2 stages of balanced MACs), each trained apart for T epochs against the
                   float teacher's features, then stitched (`ptq_kd`); run with 1 worker (in
                   process) and with 2 Ray workers, which must give the same network
  (iv)  whole-network KD  the same recipe on the network at once, T epochs (`whole_network_kd`)
QAT arms train on labels (cross entropy, LSQ through the fake-quant network); KD arms on the
float teacher's features (MSE), no labels. Calibration: the 512 shipped images. Top-1 of the
integer network on the first `--test` test images (the fake-quant network, equal to the integer
reference). Wall seconds of each arm. Rows are appended to a CSV as they finish (an interrupted
run resumes); `--report` joins CSVs of runs on different models.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from csv_rows import append_row, read_rows
from threadpoolctl import threadpool_limits

from dopant.codesign.ptqkd import ptq_kd, whole_network_kd
from dopant.compiler.driver import latency
from dopant.compiler.models.datasets import load_fashion_mnist, load_sample
from dopant.compiler.models.pretrained import load_pretrained

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = "edge16"
SCHEDULES = {"w4a4": "w8a8,w4a8,w4a4", "w2a4": "w8a8,w4a8,w4a4,w2a4"}
KD_STAGES = {"lenet5": 2, "resnet8": None}  # None: the residual stages
FIELDS = ("model", "bits", "arm", "top1", "float_top1", "cycles", "epochs", "wall_s", "detail")


def read_runs(paths: list[Path]) -> list[dict[str, str]]:
    """The rows of every CSV in `paths`, the last of each (model, bits, arm)."""
    rows = {(r["model"], r["bits"], r["arm"]): r for path in paths for r in read_rows(path)}
    return list(rows.values())


def qat_arm(arm: str, name: str, bits: str, data: dict, epochs: int) -> dict[str, object]:
    from dopant.codesign.progressive import one_jump, progressive

    start = time.perf_counter()
    run = one_jump if arm == "one-jump" else progressive
    result = run(
        load_pretrained(name),
        data["example"],
        schedule=SCHEDULES[bits],
        train_data=data["train"],
        calibration=data["calibration"],
        eval_data=data["test"],
        target=TARGET,
        epochs_per_stage=epochs,
        log=lambda line: print(f"  {line}", flush=True),
    )
    stages = "; ".join(
        f"{r.stage}: {r.top1_start:.2%} -> {r.top1:.2%} (drop {r.drop * 100:+.2f})"
        for r in result.records
    )
    return {
        "top1": result.top1,
        "float_top1": result.float_top1,
        "cycles": result.cycles,
        "epochs": sum(r.epochs for r in result.records),
        "wall_s": time.perf_counter() - start,
        "detail": stages,
    }


def kd_arm(arm: str, name: str, bits: str, data: dict, epochs: int) -> dict[str, object]:
    start = time.perf_counter()
    options = {
        "calibration": data["calibration"],
        "train_images": data["train"][0],
        "bits": bits,
        "epochs": epochs,
        "eval_data": data["test"],
        "target": TARGET,
        "log": lambda line: print(f"  {line}", flush=True),
    }
    if arm == "whole-kd":
        result = whole_network_kd(load_pretrained(name), data["example"], **options)
    else:
        workers = 2 if arm == "stage-kd-2" else 1
        result = ptq_kd(
            load_pretrained(name),
            data["example"],
            stages=KD_STAGES[name],
            workers=workers,
            **options,
        )
    stages = "; ".join(
        f"{s.stage.begins or 'input'}->{s.stage.ends or 'output'}: "
        f"{s.loss_before:.4f} -> {s.loss_after:.4f} (chained {s.kd_stitched:.4f})"
        for s in result.stages
    )
    ir_digest = hashlib.sha256(str(result.quantized).encode()).hexdigest()[:12]
    return {
        "top1": result.accuracy.get(result.label),
        "float_top1": result.accuracy.get("float"),
        "cycles": latency(result.quantized, TARGET).total_cycles,
        "epochs": epochs,
        "wall_s": time.perf_counter() - start,
        "detail": f"{stages}; PTQ {result.accuracy.get('PTQ', float('nan')):.2%}; "
        f"logits MSE {result.logits_mse}; IR sha256 {ir_digest}",
    }


def print_rows(rows: list[dict[str, str]]) -> None:
    order = {"one-jump": 0, "progressive": 1, "stage-kd-1": 2, "stage-kd-2": 3, "whole-kd": 4}
    print("\n| model | bits | arm | top-1 | float | epochs | wall s | detail |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["model"], r["bits"], order.get(r["arm"], 9))):
        print(
            f"| {r['model']} | {r['bits']} | {r['arm']} | {float(r['top1']):.2%} | "
            f"{float(r['float_top1']):.2%} | {r['epochs']} | {float(r['wall_s']):.0f} | "
            f"{r['detail']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="lenet5,resnet8")
    parser.add_argument("--bits", default="w4a4,w2a4")
    parser.add_argument("--arms", default="one-jump,progressive,stage-kd-1,stage-kd-2,whole-kd")
    parser.add_argument("--train", type=int, default=1024, help="training images")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per progressive stage")
    parser.add_argument("--test", type=int, default=10000, help="test images (10000: all)")
    parser.add_argument("--csv", default=str(RESULTS / "progressive.csv"))
    parser.add_argument("--report", help="CSV files (comma-separated): print, run nothing")
    args = parser.parse_args()
    if args.report:
        print_rows(read_runs([Path(p) for p in args.report.split(",")]))
        return
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    calibration = load_sample()[0].x
    train, test = load_fashion_mnist("train").subset(args.train), load_fashion_mnist("test")
    data = {
        "example": torch.from_numpy(calibration[:1]),
        "calibration": calibration,
        "train": (train.x, train.y.astype(np.int64)),
        "test": (test.x[: args.test], test.y[: args.test]),
    }
    out = Path(args.csv)
    done = {(r["model"], r["bits"], r["arm"]) for r in read_runs([out])}
    with threadpool_limits(limits=1, user_api="blas"):
        for name in args.models.split(","):
            for bits in args.bits.split(","):
                stages = len(SCHEDULES[bits].split(","))
                for arm in args.arms.split(","):
                    if (name, bits, arm) in done:
                        continue
                    print(f"{name} {bits} {arm}", flush=True)
                    if arm in ("one-jump", "progressive"):
                        row = qat_arm(arm, name, bits, data, args.epochs)
                    else:
                        row = kd_arm(arm, name, bits, data, args.epochs * stages)
                    row.update(model=name, bits=bits, arm=arm)
                    append_row(out, FIELDS, row)
                    print(f"  {row}", flush=True)
    print_rows(read_runs([out]))


if __name__ == "__main__":
    main()
