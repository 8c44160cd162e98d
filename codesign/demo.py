"""The main job on an embedded default: a ResNet-8 trained on Fashion-MNIST (shipped weights and
a shipped 1000-image test sample), imported, canonicalized, run on the reference interpreter
against torch, then calibrated, quantized to integers and evaluated again; the W8A8 network is
compiled for the edge16 accelerator, the test sample runs on the simulator (checked bit for bit
against the integer reference) and the latency profile is printed. Finally the co-design step:
the network gets half the dense W8A8 latency on edge16 as its budget, and the loop chooses the
channels each group keeps (SOSP-H saliency) and each layer's bit widths, 4 or 8 (HAWQ
sensitivity) under it, measures every answer on the simulator's timing model until one lands
within 2 % under the budget, fine-tunes the pruned model briefly on the shipped training images
(float, then QAT of the integer network), compiles it, runs the test sample on the simulator the
same way and compares it with the dense one."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from xdsl.dialects.builtin import ModuleOp

from dopant.codesign.finish import finetune_float, finetune_integer
from dopant.codesign.loop import codesign
from dopant.codesign.pruning import Costs
from dopant.codesign.tables import report_text
from dopant.compiler.driver import CANONICAL_PIPELINE, compile_module, quantize_network
from dopant.compiler.evaluate import BatchedRunner, top1
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import Dataset, load_sample
from dopant.compiler.models.pretrained import PRETRAINED, load_pretrained
from dopant.compiler.pipeline import run_pipeline
from dopant.compiler.summary import format_table, op_rows
from dopant.support.errors import InputError

TARGET = "edge16"  # the accelerator the demo compiles for (a preset of backend.presets)
BUDGET = "0.5x"  # half the dense W8A8 network's measured cycles on TARGET
# 4 and 8 bits: 2-bit layers need longer QAT than the demo's few epochs on 512 images.
WIDTHS = (4, 8)
QAT_EPOCHS = 4  # LSQ on the fake-quant network after the float fine-tune
SALIENCY_BATCH = 64  # the 512 calibration images in 8 batches
FINETUNE_EPOCHS = 8  # dopant's training recipe (codesign.finish) on the 512 shipped images
QUANTIZED: dict[str, dict[str, Any]] = {  # name -> quantize options
    "W8A8": {"weight_bits": 8, "act_bits": 8},
    "W4A8": {"weight_bits": 4, "act_bits": 8, "weight_clip": "mse"},
    "W4A4 (first/last 8)": {
        "weight_bits": 4,
        "act_bits": 4,
        "weight_clip": "mse",
        "first_last_bits": 8,
    },
}


def demo(model_ref: str = "zoo:resnet8") -> dict[str, float]:
    """Run the main job; the top-1 accuracy of each variant on the test sample, and the cycles
    and MACs of the dense and the pruned network."""
    torch.set_num_threads(1)  # a shared 2-core machine: threads would fight
    with threadpool_limits(limits=1, user_api="blas"):
        return _demo(model_ref.removeprefix("zoo:"))


def _demo(name: str) -> dict[str, float]:
    if name not in PRETRAINED:
        raise InputError(
            f"the demo runs a trained model: zoo:{' or zoo:'.join(PRETRAINED)}, not zoo:{name}."
        )
    calibration, test = load_sample()
    model = load_pretrained(name)
    start = time.perf_counter()
    module = import_model(model, torch.from_numpy(test.x[:1]))
    report = run_pipeline(module, CANONICAL_PIPELINE)
    print(
        f"zoo:{name} (trained on Fashion-MNIST): imported in "
        f"{time.perf_counter() - start:.2f} s; pipeline '{CANONICAL_PIPELINE}':"
    )
    print(report.table(), end="\n\n")
    print(format_table(op_rows(module)), end="\n\n")

    start = time.perf_counter()
    logits = BatchedRunner(module).run(test.x)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        expected = model(torch.from_numpy(test.x)).numpy()
    error = float(np.abs(logits - expected).max() / np.abs(expected).max())
    results = {"float": top1(logits, test.y)}
    print(
        f"reference interpreter on {len(test)} test images: {elapsed:.2f} s; max error against "
        f"torch {error:.1e} of the output scale\n"
    )

    networks, integer_logits = {}, {}
    for label, options in QUANTIZED.items():
        networks[label] = quantize_network(module, calibration.x, method="mse", **options)
        integer_logits[label] = BatchedRunner(networks[label]).run(test.x)
        results[label] = top1(integer_logits[label], test.y)
    print(
        f"top-1 accuracy on the {len(test)}-image Fashion-MNIST test sample (calibrated on "
        f"{len(calibration)} training images, MSE clipping):"
    )
    for label, value in results.items():
        print(f"  {label:<22} {value:.2%}")
    score, cycles = _accelerator(networks["W8A8"], integer_logits["W8A8"], test.x, test.y)
    results["W8A8 on the accelerator"] = score
    dense = Row("dense", Costs.of(module), results["float"], score, cycles)
    pruned = _codesigned(model, calibration, test)
    _compare(dense, pruned)
    results["pruned float"], results["co-designed on the accelerator"] = (
        pruned.float_top1,
        pruned.w8a8_top1,
    )
    results["cycles"], results["pruned cycles"] = dense.cycles, pruned.cycles
    results["MACs"], results["pruned MACs"] = dense.costs.macs, pruned.costs.macs
    return results


@dataclass(frozen=True)
class Row:
    """One network in the closing comparison."""

    label: str
    costs: Costs
    float_top1: float
    w8a8_top1: float
    cycles: int


def _codesigned(model: torch.nn.Module, calibration: Dataset, test: Dataset) -> Row:
    """Co-design `model` under half its dense latency on TARGET (pruning and bit widths, scored
    on the calibration images, fine-tuned on them) and run the result through the same
    simulate-and-check path as the dense network."""
    start = time.perf_counter()
    batches = [
        (torch.from_numpy(x), torch.from_numpy(y)) for x, y in calibration.batches(SALIENCY_BATCH)
    ]

    def finetune(pruned: torch.nn.Module) -> None:
        finetune_float(pruned, calibration, FINETUNE_EPOCHS)

    def qat(network: FakeQuantNetwork) -> None:
        finetune_integer(network, calibration, QAT_EPOCHS)

    print(f"\nco-design under {BUDGET} of the dense W8A8 latency on '{TARGET}':")
    result = codesign(
        model,
        torch.from_numpy(test.x[:1]),
        target=TARGET,
        calibration=calibration.x,
        latency_budget=BUDGET,
        batches=batches,
        finetune=finetune,
        qat=qat,
        widths=WIDTHS,
        eval_data=(test.x, test.y),
        log=lambda line: print("  " + line),
    )
    print(report_text(result))
    print(
        f"co-design took {time.perf_counter() - start:.1f} s ({FINETUNE_EPOCHS}-epoch fine-tune "
        f"and {QAT_EPOCHS}-epoch QAT on {len(calibration)} images included)"
    )
    quantized = result.stages["quantized"]
    expected = BatchedRunner(quantized).run(test.x)
    score, cycles = _accelerator(quantized, expected, test.x, test.y, profile=False)
    label = f"co-designed ({BUDGET})"
    return Row(
        label, Costs.of(result.stages["pruned"]), result.accuracy["float fine-tuned"], score, cycles
    )


def _compare(*rows: Row) -> None:
    dense = rows[0]
    print(
        f"\n{'network':<20} {'MACs':>11} {'params':>9} {'float top-1':>12} "
        f"{'top-1 on edge16':>15} {'cycles':>9} {'speed-up':>9}"
    )
    for r in rows:
        print(
            f"{r.label:<20} {r.costs.macs:>11,} {r.costs.params:>9,} {r.float_top1:>12.2%} "
            f"{r.w8a8_top1:>15.2%} {r.cycles:>9,} {dense.cycles / r.cycles:>8.2f}x"
        )


def _accelerator(
    quantized: ModuleOp,
    expected: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    profile: bool = True,
) -> tuple[float, int]:
    """Compile the integer network for the edge16 preset, run the test sample on the simulated
    accelerator, check it against the integer reference's logits `expected` and print the
    latency profile (or only its summary); (top-1, cycles per image)."""
    start = time.perf_counter()
    compiled = compile_module(quantized, target=TARGET)
    program = compiled.program
    print(
        f"\ncompiled for '{TARGET}' in {time.perf_counter() - start:.2f} s: "
        f"{len(program.instructions):,} instructions, {len(compiled.binary):,} bytes"
    )
    start = time.perf_counter()
    logits = program.run(x).outputs[0]  # one batched run: image i bit-exact to its run alone
    elapsed = time.perf_counter() - start
    same = int(np.sum(np.all(logits == expected, axis=1)))
    score = top1(logits, y)
    print(
        f"simulated {len(x)} images in {elapsed:.1f} s: top-1 {score:.2%}; logits bit-identical "
        f"to the integer reference on {same} of {len(x)} images\n"
    )
    stats = program.stats
    print(stats.summary())
    if profile:
        print(stats.table())
    return score, stats.total_cycles
