"""Co-design benchmark on Fashion-MNIST: does latency-aware selection beat MAC-driven pruning at
equal *measured* latency, and do mixed bit widths beat uniform ones?

    python benchmarks/codesign.py [--models resnet8,resnet20] [--targets edge16,large32]
        [--budgets 0.7,0.5,0.3] [--arms a,b,c,d,e] [--finetune 10000] [--csv FILE]
    python benchmarks/codesign.py --report FILE,...   # the table and plot of finished rows
    python benchmarks/codesign.py --speed     # the speed goals only (cold, no fine-tune)

For each model (ResNet-8 shipped, ResNet-20 trained by benchmarks/trained.py, cached), target
and budget (a fraction of the dense W8A8 network's measured cycles on that target, or, with
`--budgets w4a8,w4a4`, a uniform network's measured cycles: does (d) dominate it?), the arms:
  (a) mac     global magnitude pruning to a MAC target (Torch-Pruning style, `select_channels`
              with round_to=1), W8A8; the MAC fraction bisected until the *measured* cycles are
              at or under the budget and within 2% of it (rounds = measurements taken)
  (b) sosp-h  `codesign(prune=True, bits=False)`: latency-aware channel selection by SOSP-H
  (c) w8a8, w4a8, w4a4: uniform widths, nothing pruned (no budget: one point each)
  (d) bits    `codesign(prune=False, bits=True)`: mixed precision under the budget
  (e) joint   `codesign(prune=True, bits=True)`
  (f) bits-loss, joint-loss: (d) and (e) with the measured loss increase of each layer's
              widths alone (`sensitivity="loss"`) instead of HAWQ-V3's estimate (an
              ablation; not in the default arms)
  (g) bits-48, bits-48-loss: (d) and (f) offering only the widths of (c), 4 and 8 (not in the
              default arms)
(d) and (e) cost bit widths by HAWQ-V3 (`sensitivity="hessian"`, the default). Saliency and
sensitivity come from the 512 shipped calibration images with their labels (batches of 64),
computed once per model and passed back (`scores=`, `sensitivity=`) to every later arm, budget and
target; calibration uses the same images. Every arm gets the same fine-tune of its pruned (or
dense) float torch model before its final quantization: one epoch over the first `--finetune`
training images, dopant's recipe at peak lr 0.01 (as benchmarks/pruning.py); no QAT, so the bit
widths' rounding is not trained away. The dense model's fine-tune is run once per model and reused
(training is reproducible for a seed and thread count). Accuracy: the final integer network on the
full 10k test set, through `FakeQuantNetwork` (checked bit for bit against the integer reference on
64 test images for each network; the reference is used instead if they differ). Uniform accuracy
does not depend on the target (quantization never reads it), so it is computed once. Cycles are the
latency oracle's (`dopant.compiler.latency`, equal to the compiled binary's), FPS at the preset's
clock. Seconds: `wall_s` the whole arm without the accuracy evaluation, `loop_s` the same without
the fine-tune, `score_s` the saliency/sensitivity computed in that arm (0 when reused). Rows are
appended to a CSV as they finish, so an interrupted run resumes; runs on disjoint models or targets
can share the two cores with one CSV each, and `--report` joins them. Data: Debian's
dataset-fashion-mnist.

The arms are in codesign_arms.py, what they share in codesign_setup.py, and the CSV, the tables
and the plot in codesign_report.py; this file runs the grid.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from codesign_arms import codesign_arm, mac_arm, uniform_arm
from codesign_report import append_row, done_rows, plot, print_summary, print_table
from codesign_setup import ARMS, RESULTS, UNIFORM, Data, ModelState, quantized, timed
from threadpoolctl import threadpool_limits
from trained import trained

from dopant.backend.presets import load_target
from dopant.codesign import LatencyTable, codesign
from dopant.codesign.budget import LatencyBudget
from dopant.compiler.driver import latency
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import load_fashion_mnist, load_sample
from dopant.passes.tile import clear_plan_caches


def budget_text(key: str, name: str, target: str, out: Path) -> str:
    """The latency budget `key` names: a fraction of the dense cycles ("0.5"), or a uniform
    network's measured cycles on this target ("w4a8": its row must be in `out`)."""
    if key not in UNIFORM:
        return f"{key}x"
    row = done_rows(out).get((name, target, "none", key))
    if row is None:
        raise SystemExit(f"budget '{key}' needs the {key} row of {name} on {target}: run arm c")
    return f"{row['cycles']}cycles"


def run_target(state: ModelState, target: str, budgets: list[str], arms: list[str], out: Path):
    config = load_target(target)
    dense = latency(quantized(state.model, state.data), config).total_cycles
    print(f"\n# {state.name} on {target}: dense W8A8 {dense:,} cycles", flush=True)
    for arm in [a for letter in arms for a in ARMS[letter]]:
        for key in ["none"] if arm in UNIFORM else budgets:
            if (state.name, target, key, arm) in done_rows(out):
                continue
            print(f"{state.name} {target} {key} {arm}", flush=True)
            text = "" if arm in UNIFORM else budget_text(key, state.name, target, out)
            budget = LatencyBudget.parse(text).cycles(config, dense) if text else ""
            if arm in UNIFORM:
                row = uniform_arm(state, config, arm)
            elif arm == "mac":
                row = mac_arm(state, config, budget)
            else:
                row = codesign_arm(state, config, text, arm)
            cycles = row["cycles"]
            row.update(
                model=state.name,
                target=target,
                budget=key,
                arm=arm,
                budget_cycles=budget,
                dense_cycles=dense,
                fps=config.clock_mhz * 1e6 / cycles if "acc" in row else "",
            )
            append_row(out, row)
            acc = f"{row['acc']:.2%}" if "acc" in row else "-"
            print(f"  -> {cycles:,} cycles, {acc}, {row['status']}", flush=True)


def uniform_from_csv(state: ModelState, out: Path) -> None:
    """The uniform rows' accuracy measured on another target (quantization ignores it)."""
    for (model, _, _, arm), r in done_rows(out).items():
        if model == state.name and arm in UNIFORM and r["acc"]:
            state.uniform_acc[arm] = (float(r["acc"]), float(r["eval_s"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet8,resnet20")
    parser.add_argument("--targets", default="edge16,large32")
    parser.add_argument(
        "--budgets",
        default="0.7,0.5,0.3",
        help="fractions of the dense cycles, or w4a8/w4a4 "
        "(that uniform network's measured cycles, to test Pareto dominance)",
    )
    parser.add_argument("--arms", default="a,b,c,d,e", help="letters of the arms (module doc)")
    parser.add_argument("--finetune", type=int, default=10000, help="training images")
    parser.add_argument("--test", type=int, default=10000, help="test images (smoke runs)")
    parser.add_argument("--csv", default=str(RESULTS / "codesign.csv"))
    parser.add_argument("--plot", default=str(RESULTS / "codesign.png"))
    parser.add_argument("--speed", action="store_true", help="only the speed goals")
    parser.add_argument("--report", help="CSV files (comma-separated): print and plot, run nothing")
    args = parser.parse_args()
    if args.report:
        joined = {k: r for name in args.report.split(",") for k, r in done_rows(Path(name)).items()}
        rows = list(joined.values())  # a row in several files: the last file's
        print_table(rows)
        print_summary(rows)
        plot(rows, Path(args.plot))
        return
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    calibration = load_sample()[0]
    if args.speed:
        with threadpool_limits(limits=1, user_api="blas"):
            speed(Data(calibration, calibration, calibration))
        return
    train_set, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    data = Data(calibration, train_set.subset(args.finetune), test.subset(args.test))
    out = Path(args.csv)
    out.parent.mkdir(exist_ok=True)
    budgets = args.budgets.split(",")
    for key in budgets:
        if key not in UNIFORM and not key.replace(".", "", 1).isdigit():
            parser.error(f"--budgets: '{key}' is not a fraction nor one of {', '.join(UNIFORM)}")
    arms = args.arms.split(",")
    states = {name: ModelState(name, trained(name), data) for name in args.models.split(",")}
    with threadpool_limits(limits=1, user_api="blas"):
        for target in args.targets.split(","):  # every model on a target before the next
            for state in states.values():
                uniform_from_csv(state, out)
                run_target(state, target, budgets, arms, out)
    rows = list(done_rows(out).values())
    print_table(rows)
    print_summary(rows)
    plot(rows, Path(args.plot))


def speed(data: Data) -> None:
    """The speed goals for ResNet-20 on edge16, cold: a full latency table (every grid point at
    every width pair, no disk cache, tile plans cleared), then the whole loop (joint, 0.5x, its
    own empty cache, scores computed, no fine-tune)."""
    model = trained("resnet20")
    network = import_model(model, data.example)
    clear_plan_caches()
    table = LatencyTable.of(network, "edge16", disk_cache=False)
    print(f"ResNet-20 edge16 latency table, cold fill: {timed(table.fill):.1f} s")
    clear_plan_caches()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        result = codesign(
            model,
            data.example,
            target="edge16",
            calibration=data.calibration.x,
            latency_budget="0.5x",
            batches=data.batches,
            cache_dir=cache,
            log=print,
        )
        total = time.perf_counter() - start
    stages = ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())
    print(f"ResNet-20 edge16 joint 0.5x, cold, no fine-tune: {total:.1f} s ({stages})")


if __name__ == "__main__":
    main()
