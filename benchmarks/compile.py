"""Compile benchmark: every zoo model on every preset, W8A8, through the whole driver.

    python benchmarks/compile.py [--models all] [--targets small8,edge16,large32]
        [--dataflows ws,os] [--plot benchmarks/results/compile_resnet18_edge16.png]

Table 1, per model, preset and dataflow: seconds per compile stage (import, canonical, calibrate,
quantize, tile, lower to accel, emit), instructions, binary size, simulated cycles, frames per
second at the preset's clock, MAC utilization (compute bound / cycles) and schedule efficiency
(roofline bound / cycles).

Table 2, the per-layer check: each compute-bound layer (its MAC bound above its DRAM bound)
must take at least its roofline bound and at most 1.1x the standard systolic fold model of the
untiled layer (`backend.costs.fold_model_cycles`: SCALE-Sim, Samajdar et al., ISPASS 2020, per
fold 2R + C + M - 2 weight-stationary and R + C + K - 2 output-stationary, computed from the
layer's GEMM in the binary's debug map, not from its tiles). The reference is independent of
the tiler, so what tiling costs (a fold cut short at a tile edge, each tile's own fill and
drain) counts against the layer; a layer over the bound is listed, and the bound is not
loosened to hide it. A layer that beats the model gains from what the model does not overlap:
weight-stationary double-buffered weights preload behind the previous fold's stream, and both
dataflows drain a fold under the next. The layer's time is the span of its instructions on
the compute engine (first conv start to last conv end, stalls between its tiles included): the
fold model counts the array alone, and a layer's loads and stores overlap its neighbours.

Table 3, the latency oracle (`driver.latency`): for each model's quantized IR on one preset,
seconds per call of the fast path the co-design loop uses (tile and the lowering's instruction
schedule, then the timing model; no accel ops, binary, loader or functional simulation):
the first call with no tile plan cached, and the median of further calls of the same query;
beside the whole driver's compile plus timing of the same IR, and whether the cycles agree.

The plot (matplotlib): one model on one preset (ws), per
layer, the simulated compute span against the roofline bound and the fold model.

Weights are random (the zoo's init); each network is calibrated on 2 random images. One BLAS
and torch thread, so the figures do not depend on a neighbour's load.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from dopant.backend.presets import preset
from dopant.compiler.driver import CompiledModel, compile_module, latency
from dopant.compiler.driver import compile as compile_model
from dopant.compiler.models import zoo
from dopant.passes.tile import clear_plan_caches
from dopant.runtime.stats import LayerStats, RunStats

FOLD_MODEL_SLACK = 1.1  # the bound: at most 10% over the fold model
STAGE_COLUMNS = ("imported", "canonical", "calibrated", "quantized", "tiled", "accel", "binary")


@dataclass(frozen=True)
class Row:
    model: str
    target: str
    compiled: CompiledModel
    stats: RunStats


def _compile(name: str, target: str, dataflow: str) -> Row:
    torch.manual_seed(0)
    entry = zoo.get(name)
    model = entry.build().eval()
    x = np.random.default_rng(0).uniform(0, 1, (2, *entry.input_shape[1:])).astype(np.float32)
    compiled = compile_model(
        model, torch.from_numpy(x[:1]), target=target, calibration=x, dataflow=dataflow
    )
    return Row(name, target, compiled, compiled.program.run(x[:1]).stats)


def _stage_table(rows: list[Row]) -> str:
    header = (
        f"{'model':<12}{'target':<8}{'flow':<5}"
        + "".join(f"{s[:6]:>7}" for s in STAGE_COLUMNS)
        + f"{'instrs':>8}{'KiB':>8}{'cycles':>12}{'FPS':>9}{'MAC util':>9}{'sched eff':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        seconds = r.compiled.stage_seconds
        fps = r.stats.clock_mhz * 1e6 / r.stats.total_cycles
        lines.append(
            f"{r.model:<12}{r.target:<8}{r.compiled.config.dataflow:<5}"
            + "".join(f"{seconds.get(s, 0.0):>7.2f}" for s in STAGE_COLUMNS)
            + f"{len(r.compiled.program.instructions):>8,}{len(r.compiled.binary) / 1024:>8.0f}"
            f"{r.stats.total_cycles:>12,}{fps:>9,.0f}"
            f"{r.stats.compute_bound_cycles / r.stats.total_cycles:>9.1%}"
            f"{r.stats.utilization:>10.1%}"
        )
    return "\n".join(lines)


def _compute_bound(layer: LayerStats) -> bool:
    return layer.macs > 0 and layer.bound == "compute"


def _ratio(layer: LayerStats) -> float:
    return layer.compute_span_cycles / layer.fold_model_cycles


def _check_table(rows: list[Row]) -> str:
    header = (
        f"{'model':<12}{'target':<8}{'flow':<5}{'checked':>8}{'< roofline':>11}"
        f"{'> 1.1x fold':>12}{'beat fold':>10}{'span/fold':>14}  lowest ratio at"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        layers = [layer for layer in r.stats.layers if _compute_bound(layer)]
        under = [la for la in layers if la.compute_span_cycles < la.roofline_cycles]
        over = [
            la for la in layers if la.compute_span_cycles > FOLD_MODEL_SLACK * la.fold_model_cycles
        ]
        beat = [la for la in layers if la.compute_span_cycles < la.fold_model_cycles]
        low = min(layers, key=_ratio, default=None)
        high = max(layers, key=_ratio, default=None)
        span = f"{_ratio(low):.2f}-{_ratio(high):.2f}x" if low and high else "-"
        lines.append(
            f"{r.model:<12}{r.target:<8}{r.compiled.config.dataflow:<5}{len(layers):>8}"
            f"{len(under):>11}{len(over):>12}{len(beat):>10}{span:>14}  {low.name if low else ''}"
        )
        lines += [
            f"    outside the bounds: {la.name} {la.compute_span_cycles:,} cycles, roofline "
            f"{la.roofline_cycles:,.0f}, fold model {la.fold_model_cycles:,}"
            for la in under + over
        ]
    return "\n".join([*lines, "-" * len(header), _check_summary(rows)])


def _check_summary(rows: list[Row]) -> str:
    """The whole check in a few lines: counts, and the lowest and highest span / fold model."""
    checked = [
        (_ratio(la), f"{la.name} ({r.model} {r.target} {r.compiled.config.dataflow})")
        for r in rows
        for la in r.stats.layers
        if _compute_bound(la)
    ]
    if not checked:
        return "no compute-bound layer"
    under = sum(
        la.compute_span_cycles < la.roofline_cycles
        for r in rows
        for la in r.stats.layers
        if _compute_bound(la)
    )
    over = sorted((c for c in checked if c[0] > FOLD_MODEL_SLACK), reverse=True)
    low, high = min(checked), max(checked)
    return "\n".join(
        [
            f"{len(checked)} compute-bound layers: {under} below the roofline, {len(over)} over "
            f"{FOLD_MODEL_SLACK}x the fold model, {sum(c[0] < 1 for c in checked)} under it",
            f"span / fold model from {low[0]:.2f}x at {low[1]} to {high[0]:.2f}x at {high[1]}",
            *(f"    {ratio:.2f}x {where}" for ratio, where in over[:10]),
        ]
    )


def _seconds(call: Callable[[], object], cold: bool = False) -> float:
    """Wall seconds of one call; `cold` empties the tile plan caches first."""
    if cold:
        clear_plan_caches()
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _oracle_table(rows: list[Row], target: str, repeats: int) -> str:
    header = (
        f"{'model':<12}{'target':<8}{'first call s':>13}{'then s':>9}{'compile+time s':>15}"
        f"{'cycles':>12}  same as the binary"
    )
    lines = [header, "-" * len(header)]
    # The compiles above keep every stage's IR of 42 networks alive; the garbage collector would
    # walk all of it inside the timed calls. Freeze what exists, as a loop holding one network
    # would not carry it.
    gc.collect()
    gc.freeze()
    for r in rows:
        if r.target != target or r.compiled.config.dataflow != "ws":
            continue
        config = preset(target)
        query = partial(latency, r.compiled.ir("quantized"), config)
        full = partial(compile_module, r.compiled.ir("quantized"), target=config)
        cold = _seconds(query, cold=True)
        warm = float(np.median([_seconds(query) for _ in range(repeats)]))
        whole = _seconds(lambda c=full: c().program.stats, cold=True)
        cycles = query().total_cycles
        lines.append(
            f"{r.model:<12}{target:<8}{cold:>13.3f}{warm:>9.3f}{whole:>15.2f}{cycles:>12,}  "
            f"{'yes' if cycles == r.stats.total_cycles else 'NO'}"
        )
    return "\n".join(lines)


def _plot(row: Row, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [layer for layer in row.stats.layers if layer.macs > 0]
    at = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.32 * len(layers)), 4.5))
    ax.bar(at, [la.compute_span_cycles for la in layers], color="tab:blue", label="simulated")
    ax.plot(at, [la.roofline_cycles for la in layers], "k_", ms=12, mew=2, label="roofline bound")
    ax.plot(
        at, [la.fold_model_cycles for la in layers], "r.", ms=8, label="fold model (untiled layer)"
    )
    ax.set_xticks(at, [la.name for la in layers], rotation=75, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("cycles")
    ax.set_title(
        f"{row.model} on {row.target} ({row.compiled.config.dataflow}), W8A8: per-layer latency"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
    temporary.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all", help="comma-separated zoo names, or all")
    parser.add_argument("--targets", default="small8,edge16,large32")
    parser.add_argument("--dataflows", default="ws,os")
    parser.add_argument("--plot", default="benchmarks/results/compile_resnet18_edge16.png")
    parser.add_argument("--plot-model", default="resnet18")
    parser.add_argument("--plot-target", default="edge16")
    parser.add_argument("--oracle-target", default="edge16", help="preset of the oracle table")
    parser.add_argument("--oracle-repeats", type=int, default=5)
    args = parser.parse_args()
    models = zoo.names() if args.models == "all" else args.models.split(",")
    torch.set_num_threads(1)
    rows = []
    start = time.perf_counter()
    with threadpool_limits(1):
        for name in models:
            for target in args.targets.split(","):
                for dataflow in args.dataflows.split(","):
                    rows.append(_compile(name, target, dataflow))
    print(f"W8A8, stage times in seconds ({time.perf_counter() - start:.0f} s in all)")
    print(_stage_table(rows))
    print()
    print("per-layer check of the compute-bound layers")
    print(_check_table(rows))
    print()
    print(f"latency oracle (driver.latency), W8A8 on {args.oracle_target}, ws")
    with threadpool_limits(1):
        print(_oracle_table(rows, args.oracle_target, args.oracle_repeats))
    plotted = (args.plot_model, args.plot_target, "ws")
    chosen = [r for r in rows if (r.model, r.target, r.compiled.config.dataflow) == plotted]
    if args.plot and chosen:
        _plot(chosen[0], Path(args.plot))
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
