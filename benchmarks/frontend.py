"""Frontend benchmark: per zoo model, import time, op count, verify time, IR text size, and the
reference interpreter's time against torch eager (both single-threaded, batch 1).

    python benchmarks/frontend.py [--models resnet8,resnet18] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text
from dopant.compiler.models import zoo
from dopant.compiler.pipeline import run_pipeline
from dopant.compiler.summary import op_rows
from dopant.runtime import reference


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """The fastest of `repeats` runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(name: str, repeats: int) -> dict[str, float | int | str]:
    entry = zoo.get(name)
    model = entry.build()
    x = torch.randn(entry.input_shape, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    module = import_model(model, x)
    import_s = time.perf_counter() - start
    verify_s = best_of(repeats, module.verify)
    text_bytes = len(ir_text(module).encode())
    ops = len(op_rows(module))
    run_pipeline(module, "fold-batchnorm,fuse-activation")
    x_np = x.numpy()
    reference_s = best_of(repeats, lambda: reference.run(module, x_np))
    with torch.no_grad():
        torch_s = best_of(repeats, lambda: model(x))
        expected = model(x).numpy()
    (got,) = reference.run(module, x_np)
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    return {
        "model": name,
        "import_s": import_s,
        "ops": ops,
        "verify_ms": verify_s * 1e3,
        "ir_mb": text_bytes / 1e6,
        "reference_ms": reference_s * 1e3,
        "torch_ms": torch_s * 1e3,
        "rel_error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(zoo.names()))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread"
    )
    header = (
        f"| {'model':<12} | {'import s':>8} | {'ops':>4} | {'verify ms':>9} | {'IR MB':>7} "
        f"| {'ref ms':>8} | {'torch ms':>8} | {'ref/torch':>9} | {'rel err':>8} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in args.models.split(","):
        r = measure(name, args.repeats)
        ratio = float(r["reference_ms"]) / float(r["torch_ms"])
        print(
            f"| {r['model']:<12} | {r['import_s']:>8.2f} | {r['ops']:>4} | {r['verify_ms']:>9.1f} "
            f"| {r['ir_mb']:>7.2f} | {r['reference_ms']:>8.1f} | {r['torch_ms']:>8.1f} "
            f"| {ratio:>9.1f} | {r['rel_error']:>8.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
