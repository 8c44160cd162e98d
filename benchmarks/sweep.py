"""A co-design sweep over machines: which accelerator config gives the best accuracy per FPS,
per microjoule and per mm^2 for ResNet-8 on Fashion-MNIST?

    python benchmarks/sweep.py [--spec benchmarks/sweeps/resnet8.toml] [--workers 1,2]
        [--out benchmarks/results/sweep]

Runs the spec once per worker count, each into its own folder (`OUT-wN`, emptied first) with
its own empty latency-table cache, so every run measures the same work (tables included);
prints the wall time and points per minute of each run, checks that the runs' tables agree
(but for the seconds columns), and prints the accuracy-FPS front with the machine that holds
each stretch of it. Each folder holds its table.csv, pareto.csv, front plots and report.html.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dopant.codesign import sweep

HERE = Path(__file__).resolve().parent
TIMES = ("compile_s", "simulate_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", default=str(HERE / "sweeps" / "resnet8.toml"))
    parser.add_argument("--workers", default="1,2", help="worker counts, one run each")
    parser.add_argument("--out", default=str(HERE / "results" / "sweep"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    tables: dict[int, list[dict[str, Any]]] = {}
    for workers in (int(w) for w in args.workers.split(",")):
        folder = Path(f"{args.out}-w{workers}")
        if (folder / "sweep.json").is_file():  # a finished run would resume: nothing to time
            shutil.rmtree(folder)
        with tempfile.TemporaryDirectory(prefix="dopant-sweep-cache-") as cache:
            start = time.perf_counter()
            result = sweep(args.spec, folder, workers=workers, cache_dir=cache, log=print)
            seconds = time.perf_counter() - start
        tables[workers] = [{k: v for k, v in r.items() if k not in TIMES} for r in result.table]
        ok = sum(r["status"] == "ok" for r in result.table)
        print(
            f"\n{workers} worker(s): {len(result.table)} points ({ok} ok) in {seconds / 60:.1f} "
            f"min, {len(result.table) / (seconds / 60):.2f} points/min\n"
        )
    first = next(iter(tables.values()))
    print("tables agree:", all(t == first for t in tables.values()))
    print_front(result.pareto(x="fps", y="accuracy_integer"))


def print_front(front: list[dict[str, Any]]) -> None:
    print("\n| machine | budget | cycles | FPS | energy uJ | area mm2 | top-1 |")
    print("|---|---|---|---|---|---|---|")
    for r in front:
        print(
            f"| {r['target']} | {r['latency_budget']} | {r['cycles']:,} | {r['fps']:,.0f} | "
            f"{r['energy_uj']:.2f} | {r['area_mm2']:.2f} | {r['accuracy_integer']:.2%} |"
        )


if __name__ == "__main__":
    main()
