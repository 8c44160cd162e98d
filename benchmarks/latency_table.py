"""Latency-table benchmark: how long a full table takes, and how well the sum of its rows
predicts the whole network's measured cycles.

    python benchmarks/latency_table.py [--models mlp,lenet5,resnet8,...] [--variants 5]
        [--targets small8,edge16,large32] [--csv benchmarks/results/latency_table.csv]

For each zoo model (untrained, its seeded init) and preset: a cold `LatencyTable.fill()` (no disk
cache, tile plans cleared first): every grid point of every row (multiples of the array width,
and the full width) at every (w_bits, a_bits) the preset has; its seconds and the single-op
programs timed. Then the prediction (`table.predict`) against the network quantized on 2 random
images and timed whole by the latency oracle (`driver.latency`, the compiled binary's cycles):
the dense W8A8 network, and `--variants` random ones per model, seeded: "pruned" (each prunable
coupling group keeps a count drawn from its grid, `PruningPlan` + `prune`), "bits" (each layer's
(w_bits, a_bits) drawn from the preset's, through `quantize`'s overrides, as set-bits writes
them), and "both". Error = (predicted - measured) / measured. ResNet-18 is left out by default:
at 224x224 its table has 55,044 entries on edge16 (219k on small8), hours on this machine.

One torch and BLAS thread. A table is printed and the rows are written to the CSV.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from train_fashion import cpu_name
from xdsl.dialects.builtin import ModuleOp

from dopant.backend.presets import preset
from dopant.codesign import LatencyTable, PruningPlan
from dopant.compiler.driver import latency, quantize_network
from dopant.compiler.frontend import import_model
from dopant.compiler.models import zoo
from dopant.dialects.qnn import Conv2DOp, LinearOp
from dopant.passes._prune_channels.costs import MemberKey
from dopant.passes._prune_channels.groups import Group, coupling_groups
from dopant.passes.prune_channels import prune
from dopant.passes.tile import clear_plan_caches

MODELS = "mlp,lenet5,resnet8,resnet20,mobilenetv2,vgg_small"
KINDS = ("pruned", "bits", "both")


@dataclass(frozen=True)
class Result:
    model: str
    target: str
    variant: str
    fill_seconds: float
    programs: int
    predicted: int
    measured: int

    @property
    def error_percent(self) -> float:
        return 100.0 * (self.predicted - self.measured) / self.measured


def _kept(groups: list[Group], step: int, rng: np.random.Generator) -> dict[str, int]:
    """A count per prunable group drawn from its grid (multiples of step, and its size)."""
    kept = {}
    for group in groups:
        if group.prunable:
            grid = [*range(step, group.size, step), group.size]
            kept[group.id] = int(rng.choice(grid))
    return kept


def _variant(
    module: ModuleOp, table: LatencyTable, kind: str, rng: np.random.Generator
) -> tuple[ModuleOp, dict[MemberKey, int], dict[str, tuple[int, int]]]:
    """A random pruned and/or mixed-precision copy of float `module`, with the member widths
    and bit widths `table.predict` takes for it."""
    pruned = module.clone()
    widths: dict[MemberKey, int] = {}
    if kind in ("pruned", "both"):
        groups = coupling_groups(module)
        kept = _kept(groups, table.step, rng)
        prune(pruned, PruningPlan.make(groups, {g: range(k) for g, k in kept.items()}))
        for group in groups:
            for member in group.members if group.id in kept else ():
                widths[(member.path, member.dim)] = kept[group.id] * member.per_channel
    bits: dict[str, tuple[int, int]] = {}
    if kind in ("bits", "both"):
        config = table.config
        for op in module.walk():
            if isinstance(op, Conv2DOp | LinearOp):
                pair = (int(rng.choice(config.weight_bits)), int(rng.choice(config.act_bits)))
                bits[op.path.data] = pair
    return pruned, widths, bits


def _measure(
    module: ModuleOp, shape: tuple[int, ...], target: str, bits: dict[str, tuple[int, int]]
) -> int:
    """The whole network's cycles: calibrated on 2 random images, quantized with `bits`."""
    sample = np.random.default_rng(0).uniform(0, 1, (2, *shape[1:])).astype(np.float32)
    overrides = tuple(f"{path}=w{w}a{a}" for path, (w, a) in bits.items())
    return latency(quantize_network(module, sample, overrides=overrides), target).total_cycles


def _run(name: str, target: str, variants: int) -> list[Result]:
    entry = zoo.get(name)
    shape = entry.input_shape
    module = import_model(entry.build(), torch.zeros(shape))
    clear_plan_caches()
    table = LatencyTable.of(module, target, disk_cache=False)
    start = time.perf_counter()
    table.fill()
    seconds = time.perf_counter() - start
    programs = table.measurements
    dense = _measure(module, shape, target, {})
    rows = [Result(name, target, "dense W8A8", seconds, programs, table.predict(), dense)]
    rng = np.random.default_rng([zoo.names().index(name), preset(target).cols])
    for i in range(variants):
        kind = KINDS[i % len(KINDS)]
        copy, widths, bits = _variant(module, table, kind, rng)
        predicted = table.predict(widths, bits)
        measured = _measure(copy, shape, target, bits)
        rows.append(Result(name, target, f"{kind} {i + 1}", seconds, programs, predicted, measured))
    return rows


def _summary(results: list[Result]) -> str:
    """One line per model and preset: fill time, programs, dense error, variants' errors."""
    lines = [
        f"{'model':<12} {'preset':<8} {'fill s':>7} {'programs':>8} {'dense err':>9} "
        f"{'variants: mean |err|':>20}  {'min .. max':>16}"
    ]
    keys = dict.fromkeys((r.model, r.target) for r in results)
    for model, target in keys:
        rows = [r for r in results if (r.model, r.target) == (model, target)]
        dense, others = rows[0], [r.error_percent for r in rows[1:]]
        spread = f"{min(others):+.1f} .. {max(others):+.1f}%" if others else "-"
        mean = f"{np.mean(np.abs(others)):.1f}%" if others else "-"
        lines.append(
            f"{model:<12} {target:<8} {dense.fill_seconds:>7.1f} {dense.programs:>8,} "
            f"{dense.error_percent:>+8.1f}% {mean:>20}  {spread:>16}"
        )
    return "\n".join(lines)


def _write(results: list[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            [
                "model",
                "preset",
                "variant",
                "fill_seconds",
                "programs",
                "predicted_cycles",
                "measured_cycles",
                "error_percent",
            ]
        )
        for r in results:
            out.writerow(
                [
                    r.model,
                    r.target,
                    r.variant,
                    f"{r.fill_seconds:.2f}",
                    r.programs,
                    r.predicted,
                    r.measured,
                    f"{r.error_percent:+.2f}",
                ]
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help="comma-separated zoo names")
    parser.add_argument("--targets", default="small8,edge16,large32")
    parser.add_argument("--variants", type=int, default=5)
    parser.add_argument("--csv", default="benchmarks/results/latency_table.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {cpu_name()}, {time.strftime('%Y-%m-%d')}, one thread")
    results: list[Result] = []
    with threadpool_limits(1):
        for name in args.models.split(","):
            for target in args.targets.split(","):
                results += _run(name, target, args.variants)
                print(_summary(results).splitlines()[-1], flush=True)
                _write(results, Path(args.csv))
    print()
    print(_summary(results))
    print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
