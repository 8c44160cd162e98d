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
"""

from __future__ import annotations

import argparse
import copy
import csv
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn
from trained import trained

from dopant.backend.presets import load_target
from dopant.backend.target import AccelConfig
from dopant.codesign import LatencyTable, PruningPlan, codesign, group_saliency, prune_module
from dopant.codesign.budget import LatencyBudget
from dopant.codesign.choose import layer_paths
from dopant.codesign.loop import BudgetNotMet
from dopant.codesign.pruning import Costs
from dopant.codesign.select import Target, plan_for
from dopant.codesign.sensitivity import bit_sensitivity
from dopant.compiler.driver import latency, quantize_network
from dopant.compiler.evaluate import BatchedRunner, top1
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import Dataset, load_fashion_mnist, load_sample
from dopant.compiler.models.train import train
from dopant.dialects.qnn.base import forward
from dopant.passes._prune_channels.costs import layer_shapes
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes.prune_channels import prune as prune_ir
from dopant.passes.tile import clear_plan_caches

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.02  # the band under the budget every budgeted arm must land in
MAX_MEASUREMENTS = 16  # of the MAC-driven search
# The joint arms halve the channel step no further: ResNet-8's joint arm at 0.3x on large32 was
# still measuring its step-4 table (27 width combinations at every channel count) after 10 min.
MIN_JOINT_STEP = 8
EVAL_BATCH = 100  # FakeQuantNetwork runs fastest on small batches (float64 convs)
CHECK_IMAGES = 64  # test images each network is checked on against the integer reference
WIDTHS = (2, 4, 8)  # the widths the mixed-precision arms choose from (every preset has them)
UNIFORM = {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4)}
ARMS = {
    "a": ("mac",),
    "b": ("sosp-h",),
    "c": tuple(UNIFORM),
    "d": ("bits",),
    "e": ("joint",),
    "f": ("bits-loss", "joint-loss"),
    "g": ("bits-48", "bits-48-loss"),
}
# (prune, bits, sensitivity, widths) of the arms that run the co-design loop
CODESIGN_ARMS = {
    "sosp-h": (True, False, "hessian", WIDTHS),
    "bits": (False, True, "hessian", WIDTHS),
    "joint": (True, True, "hessian", WIDTHS),
    "bits-loss": (False, True, "loss", WIDTHS),
    "joint-loss": (True, True, "loss", WIDTHS),
    "bits-48": (False, True, "hessian", (4, 8)),
    "bits-48-loss": (False, True, "loss", (4, 8)),
}
LABELS = {
    "mac": "(a) MAC-driven W8A8",
    "sosp-h": "(b) latency-aware SOSP-H",
    "w8a8": "(c) uniform W8A8",
    "w4a8": "(c) uniform W4A8",
    "w4a4": "(c) uniform W4A4",
    "bits": "(d) mixed precision",
    "joint": "(e) joint",
    "bits-loss": "(f) mixed, measured-loss sensitivity",
    "joint-loss": "(f) joint, measured-loss sensitivity",
    "bits-48": "(g) mixed precision, 4/8 bits",
    "bits-48-loss": "(g) mixed, 4/8 bits, measured-loss sensitivity",
}
FIELDS = (
    "model",
    "target",
    "budget",
    "arm",
    "status",
    "budget_cycles",
    "dense_cycles",
    "cycles",
    "fps",
    "macs",
    "acc",
    "acc_float",
    "rounds",
    "step",
    "wall_s",
    "loop_s",
    "finetune_s",
    "score_s",
    "eval_s",
    "detail",
)
Row = dict[str, object]


@dataclass
class Data:
    """What every arm shares: the labelled calibration batches, the fine-tune set, the test set."""

    calibration: Dataset
    tune: Dataset
    test: Dataset

    @property
    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in self.calibration.batches(64)]

    @property
    def example(self) -> torch.Tensor:
        return torch.from_numpy(self.calibration.x[:1])


@dataclass
class ModelState:
    """One model's work shared by its targets and arms: the saliencies and the sensitivity (as
    `codesign` computes them, on the labelled calibration batches), the dense fine-tune and the
    uniform networks' accuracy."""

    name: str
    model: nn.Module
    data: Data
    shared: dict[str, object] = field(default_factory=dict)
    dense_tuned: nn.Module | None = None
    dense_tune_s: float = 0.0
    uniform_acc: dict[str, tuple[float, float]] = field(default_factory=dict)

    def once(self, key: str) -> tuple[Any, float]:
        """(the `key` scores: magnitude, sosp-h, or the sensitivity by "loss" or "hessian"; the
        seconds they took if computed by this call, else 0)."""
        if key in self.shared:
            return self.shared[key], 0.0
        imported = import_model(self.model, self.data.example)
        start = time.perf_counter()
        if key in ("loss", "hessian"):
            value: object = bit_sensitivity(
                self.model, layer_paths(imported), self.data.batches, WIDTHS, key
            )
        else:
            groups = coupling_groups(imported)
            value = group_saliency(self.model, groups, self.data.batches, key)
        self.shared[key] = value
        return value, time.perf_counter() - start

    def tuned_dense(self) -> nn.Module:
        if self.dense_tuned is None:
            self.dense_tuned = copy.deepcopy(self.model)
            self.dense_tune_s = timed(lambda: finetune(self.dense_tuned, self.data.tune))
        return self.dense_tuned


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def finetune(model: nn.Module, data: Dataset) -> None:
    """The fine-tune every arm gets: one epoch, dopant's recipe at peak lr 0.01."""
    train(model, data, epochs=1, lr=0.01)


def quantized(model: nn.Module, data: Data, w: int = 8, a: int = 8):
    return quantize_network(
        import_model(model, data.example), data.calibration.x, weight_bits=w, act_bits=a
    )


def macs_of(model: nn.Module, data: Data) -> int:
    return Costs.of(import_model(model, data.example)).macs


def evaluate(q, test: Dataset) -> tuple[float, float]:
    """(top-1 of quantized IR `q` on `test`, seconds): `FakeQuantNetwork`, once checked bit for
    bit against the integer reference on CHECK_IMAGES images (the reference runs all of `test`
    if they differ)."""
    start = time.perf_counter()
    network = FakeQuantNetwork(q)
    check = test.x[:CHECK_IMAGES]
    with torch.no_grad():
        fast = network(torch.from_numpy(check)).numpy()
    if np.array_equal(fast, BatchedRunner(q).run(check)):
        with torch.no_grad():
            logits = np.concatenate(
                [
                    network(torch.from_numpy(test.x[i : i + EVAL_BATCH])).numpy()
                    for i in range(0, len(test), EVAL_BATCH)
                ]
            )
    else:
        print("  FakeQuantNetwork differs from the integer reference: using the reference")
        logits = BatchedRunner(q).run(test.x)
    return top1(logits, test.y), time.perf_counter() - start


def float_top1(model: nn.Module, test: Dataset) -> float:
    model.eval()
    with torch.no_grad():
        logits = np.concatenate(
            [
                model(torch.from_numpy(test.x[i : i + 1000])).numpy()
                for i in range(0, len(test), 1000)
            ]
        )
    return top1(logits, test.y)


def bits_detail(bits: dict[str, tuple[int, int]]) -> str:
    counts = Counter(f"w{w}a{a}" for w, a in bits.values())
    return " ".join(f"{k}:{n}" for k, n in sorted(counts.items(), reverse=True))


def kept_detail(kept: dict[str, int], sizes: dict[str, int]) -> str:
    return "kept " + " ".join(f"{kept[g]}/{sizes[g]}" for g in sizes)


# ---------------------------------------------------------------------------------------------
# The arms


def uniform_arm(state: ModelState, config: AccelConfig, arm: str) -> Row:
    """(c): the fine-tuned dense model at uniform widths, its own measured latency."""
    tuned = state.tuned_dense()
    start = time.perf_counter()
    w, a = UNIFORM[arm]
    q = quantized(tuned, state.data, w, a)
    cycles = latency(q, config).total_cycles
    wall = time.perf_counter() - start
    if arm not in state.uniform_acc:  # widths, not the target, decide the integer network
        state.uniform_acc[arm] = evaluate(q, state.data.test)
    acc, eval_s = state.uniform_acc[arm]
    return {
        "status": "ok",
        "cycles": cycles,
        "macs": macs_of(tuned, state.data),
        "acc": acc,
        "acc_float": float_top1(tuned, state.data.test),
        "rounds": 1,
        "wall_s": wall + state.dense_tune_s,
        "loop_s": wall,
        "finetune_s": state.dense_tune_s,
        "score_s": 0.0,
        "eval_s": eval_s,
        "detail": f"w{w}a{a}",
    }


def mac_arm(state: ModelState, config: AccelConfig, budget: int) -> Row:
    """(a): global magnitude pruning to a MAC fraction, W8A8, the fraction bisected on measured
    cycles until they land in [budget (1 - TOLERANCE), budget]."""
    data = state.data
    start = time.perf_counter()
    scores, score_s = state.once("magnitude")
    imported = import_model(state.model, data.example)
    groups = coupling_groups(imported)
    layers = layer_shapes(forward(imported, "to count"))
    dense_macs = Costs.of(imported).macs

    def measure(plan: PruningPlan) -> int:
        pruned = imported.clone()
        prune_ir(pruned, plan)
        q = quantize_network(pruned, data.calibration.x, weight_bits=8, act_bits=8)
        return latency(q, config).total_cycles

    # The most the MAC ranking can remove: every prunable group down to its best channel.
    smallest = {g.id: [int(np.argmax(scores[g.id]))] for g in groups if g.prunable}
    pruned = imported.clone()
    prune_ir(pruned, PruningPlan.make(groups, smallest))
    most = (1 - Costs.of(pruned).macs / dense_macs) * (1 - 1e-9)

    tried: list[tuple[float, int, PruningPlan]] = []
    low, high = 0.0, most  # the dense network (low) is over the budget
    fraction = most  # first the smallest network: is the budget reachable at all?
    while len(tried) < MAX_MEASUREMENTS:
        plan = plan_for(groups, layers, scores, Target("macs", fraction))
        cycles = measure(plan)
        tried.append((fraction, cycles, plan))
        print(f"  mac search: {fraction:.4f} of the MACs removed -> {cycles:,} cycles", flush=True)
        if cycles > budget:
            if fraction == most:
                break
            low = fraction
        elif cycles < (1 - TOLERANCE) * budget:
            high = fraction
        else:
            break
        if high - low < 1e-5:
            break
        fraction = (low + high) / 2
    search_s = time.perf_counter() - start
    under = [t for t in tried if t[1] <= budget]
    if not under:
        return {
            "status": f"infeasible: smallest {tried[0][1]:,} cycles",
            "cycles": tried[0][1],
            "rounds": len(tried),
            "wall_s": search_s,
            "loop_s": search_s,
            "score_s": score_s,
            "detail": f"most MACs removable {most:.1%}",
        }
    fraction, cycles, plan = max(under, key=lambda t: t[1])
    status = "ok" if cycles >= (1 - TOLERANCE) * budget else "under the band"
    model = copy.deepcopy(state.model)
    prune_module(model, plan, example_inputs=data.example)
    tune_s = timed(lambda: finetune(model, data.tune))
    q = quantized(model, data)
    final = latency(q, config).total_cycles
    if final != cycles:
        raise AssertionError(f"the fine-tuned network measures {final:,}, its search {cycles:,}")
    wall = time.perf_counter() - start
    acc, eval_s = evaluate(q, data.test)
    return {
        "status": status,
        "cycles": cycles,
        "macs": macs_of(model, data),
        "acc": acc,
        "acc_float": float_top1(model, data.test),
        "rounds": len(tried),
        "wall_s": wall,
        "loop_s": wall - tune_s,
        "finetune_s": tune_s,
        "score_s": score_s,
        "eval_s": eval_s,
        "detail": f"{fraction:.1%} of the MACs removed; "
        + kept_detail({k: len(v) for k, v in plan.keep().items()}, group_sizes(groups)),
    }


def group_sizes(groups) -> dict[str, int]:
    return {g.id: g.size for g in groups if g.prunable}


def codesign_arm(state: ModelState, config: AccelConfig, budget: str, arm: str) -> Row:
    """(b), (d), (e): the co-design loop with the same fine-tune, the model's scores and
        sensitivity passed in. The channel step is the array width (the default); when the pruning
        arms cannot reach the budget at it, it is halved until they can (down to 1 channel, to
    MIN_JOINT_STEP for the joint arms)."""
    prune, bits, method, widths = CODESIGN_ARMS[arm]
    data = state.data
    scores, score_s = state.once("sosp-h") if prune else (None, 0.0)
    sensitivity, sens_s = state.once(method) if bits else (method, 0.0)
    tune_s = inside = 0.0  # the fine-tune's seconds; the seconds spent in `tune`

    def tune(model: nn.Module) -> None:
        nonlocal tune_s, inside
        if prune:
            tune_s = inside = timed(lambda: finetune(model, data.tune))
        else:  # the dense model: its fine-tune, run once per model and reused
            inside = timed(lambda: model.load_state_dict(state.tuned_dense().state_dict()))
            tune_s = state.dense_tune_s

    start = time.perf_counter()
    failed: list[str] = []
    steps = [config.cols >> k for k in range(config.cols.bit_length())] if prune else [None]
    if prune and bits:  # every width combination at every channel count: keep the table small
        steps = [step for step in steps if step >= MIN_JOINT_STEP]
    for step in steps:
        try:
            result = codesign(
                state.model,
                data.example,
                target=config,
                calibration=data.calibration.x,
                latency_budget=budget,
                prune=prune,
                bits=bits,
                finetune=tune,
                scores=scores,
                sensitivity=sensitivity,
                widths=widths,
                step=step,
                tolerance=TOLERANCE,
                log=lambda line: print(f"  {line}", flush=True),
            )
            break
        except BudgetNotMet as error:
            print(f"  step {step}: {error}", flush=True)
            failed.append(f"step {step}: {error.minimum_cycles:,}")
            minimum = error.minimum_cycles
    else:
        wall = time.perf_counter() - start
        return {
            "status": f"infeasible: smallest {minimum:,} cycles",
            "cycles": minimum,
            "step": steps[-1] or "",
            "wall_s": wall,
            "loop_s": wall,
            "score_s": score_s + sens_s,
            "detail": "smallest measured: " + ", ".join(failed),
        }
    wall = time.perf_counter() - start - inside + tune_s + score_s + sens_s
    acc, eval_s = evaluate(result.stages["quantized"], data.test)
    detail = [f"infeasible at {', '.join(failed)}"] if failed else []
    if result.plan is not None:
        kept = {g.id: len(g.keep) for g in result.plan.groups}
        detail.append(kept_detail(kept, {g.id: g.size for g in result.plan.groups}))
    if bits:
        detail.append(bits_detail(result.bits))
    return {
        "status": "ok" if result.converged else f"not converged: {result.message}",
        "cycles": result.cycles,
        "step": step or "",
        "macs": macs_of(result.model, data),
        "acc": acc,
        "acc_float": float_top1(result.model, data.test),
        "rounds": len(result.rounds),
        "wall_s": wall,
        "loop_s": wall - tune_s,
        "finetune_s": tune_s,
        "score_s": score_s + sens_s,
        "eval_s": eval_s,
        "detail": "; ".join(detail),
    }


# ---------------------------------------------------------------------------------------------
# The grid, resumable


def done_rows(path: Path) -> dict[tuple[str, str, str, str], dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open() as handle:
        return {(r["model"], r["target"], r["budget"], r["arm"]): r for r in csv.DictReader(handle)}


def append_row(path: Path, row: Row) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: fmt(row.get(k, "")) for k in FIELDS})


def fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


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


# ---------------------------------------------------------------------------------------------
# Report


def print_table(rows: list[dict[str, str]]) -> None:
    """One markdown table, by model and target, the budgeted arms by budget."""
    print(
        "\n| model | target | budget | arm | measured cycles | FPS | top-1 integer (10k) | "
        "top-1 float | rounds | wall s | loop s | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = {arm: i for i, arm in enumerate(LABELS)}
    for r in sorted(rows, key=lambda r: row_order(r, order)):
        dense = int(r["dense_cycles"])
        cycles = int(r["cycles"])
        budget = budget_label(r["budget"])
        acc = f"{float(r['acc']):.2%}" if r["acc"] else "-"
        accf = f"{float(r['acc_float']):.2%}" if r["acc_float"] else "-"
        fps = f"{float(r['fps']):,.0f}" if r["fps"] else "-"
        note = r["status"] if r["status"] != "ok" else r["detail"]
        print(
            f"| {r['model']} | {r['target']} | {budget} | {LABELS[r['arm']]} | {cycles:,} "
            f"({cycles / dense:.1%}) | {fps} | {acc} | {accf} | {r['rounds'] or '-'} | "
            f"{float(r['wall_s']):.0f} | {float(r['loop_s']):.0f} | {note} |"
        )


def print_summary(rows: list[dict[str, str]]) -> None:
    """The goals at a glance: per model, target and budget, each budgeted arm's top-1 and
    measured cycles (as a fraction of the dense W8A8 network's)."""
    arms = [a for a in LABELS if a not in UNIFORM]
    present = [a for a in arms if any(r["arm"] == a for r in rows)]
    print("\n| model | target | budget | " + " | ".join(LABELS[a] for a in present) + " |")
    print("|---" * (3 + len(present)) + "|")
    order = {arm: i for i, arm in enumerate(LABELS)}
    keys = {(r["model"], r["target"], r["budget"]): r for r in rows if r["budget"] != "none"}
    for key in sorted(keys, key=lambda k: row_order(keys[k], order)):
        by_arm = {r["arm"]: r for r in rows if (r["model"], r["target"], r["budget"]) == key}
        cells = [summary_cell(by_arm.get(a)) for a in present]
        print(f"| {key[0]} | {key[1]} | {budget_label(key[2])} | " + " | ".join(cells) + " |")


def summary_cell(r: dict[str, str] | None) -> str:
    if r is None:
        return ""
    share = int(r["cycles"]) / int(r["dense_cycles"])
    if not r["acc"]:
        return f"infeasible (fastest {share:.1%})"
    band = "" if r["status"] == "ok" else ", under the band"
    return f"{float(r['acc']):.2%} ({share:.1%}{band})"


def budget_label(key: str) -> str:
    if key == "none":
        return "-"
    return f"at {key.upper()}" if key in UNIFORM else f"{float(key):.1f}x"


def row_order(r: dict[str, str], order: dict[str, int]) -> tuple[object, ...]:
    if r["budget"] == "none":
        budget = -1.0
    elif r["budget"] in UNIFORM:
        budget = -int(r["budget_cycles"]) / int(r["dense_cycles"])
    else:
        budget = -float(r["budget"])
    return (r["model"], r["target"], budget, order[r["arm"]])


def plot(rows: list[dict[str, str]], path: Path) -> None:
    """Top-1 (integer, 10k) against measured FPS, one panel per model and target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["model"], r["target"]) for r in rows))
    cols = 2
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 4.2 * nrows), squeeze=False)
    markers = {"mac": "s", "sosp-h": "o", "bits": "^", "joint": "D"}
    markers.update({"bits-loss": "v", "joint-loss": "d", "bits-48": "P", "bits-48-loss": "X"})
    for ax, (model, target) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if (r["model"], r["target"]) == (model, target) and r["acc"]]
        for arm in LABELS:
            points = sorted(
                (float(r["fps"]), 100 * float(r["acc"])) for r in mine if r["arm"] == arm
            )
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if arm in UNIFORM:
                ax.scatter(xs, ys, marker="*", s=120, color="black", zorder=3)
                ax.annotate(
                    arm.upper(), (xs[0], ys[0]), textcoords="offset points", xytext=(6, -10)
                )
            else:
                ax.plot(xs, ys, marker=markers[arm], label=LABELS[arm])
        dense = next((int(r["dense_cycles"]) for r in mine), None)
        if dense:
            clock = load_target(target).clock_mhz * 1e6
            for fraction in (0.7, 0.5, 0.3):
                ax.axvline(clock / (fraction * dense), color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(f"measured FPS on {target}")
        ax.set_ylabel("top-1, integer network, 10k test (%)")
        ax.set_title(f"{model} on {target} (dotted: 0.7x, 0.5x, 0.3x budgets)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
