"""One point of a sweep: a compression setting on one machine, compressed, compiled, measured
on the simulator's timing model and evaluated on the integer reference (bit-exact to the
simulator), as one table row and the details its plots draw.

`run_point(task)` is what a Ray worker runs, so a `Task` holds plain data: the model reference
(the worker builds the model itself), the data as arrays, and the saliency and sensitivity the
sweep scored once for every point (the same model and data give the same scores, so every
point, wherever it runs, starts from the same ones). A point that fails is a row with status
"error" and the error's message: the sweep goes on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from xdsl.dialects.builtin import IntegerType, ModuleOp, TensorType

from dopant.backend.image import moved_bytes
from dopant.backend.target import AccelConfig
from dopant.codesign._sweep.columns import NAMES
from dopant.codesign._sweep.space import Settings
from dopant.codesign.finish import finetune_float, finetune_integer, integer_top1, torch_top1
from dopant.codesign.loop import codesign
from dopant.codesign.pruning import prune
from dopant.codesign.sensitivity import Sensitivity
from dopant.codesign.threads import one_thread
from dopant.compiler.driver import CompiledModel, compile, compile_module
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.models.datasets import Dataset
from dopant.compiler.models.load import load_model
from dopant.dialects.qnn import Conv2DOp, LinearOp
from dopant.dialects.qnn.base import forward
from dopant.support.errors import DopantError

BATCH = 64  # images per saliency batch (the co-design CLI's)


@dataclass(frozen=True)
class ModelRef:
    """How a worker builds the model: `load_model(ref, input_shape, weights)`."""

    ref: str
    input_shape: tuple[int, ...] | None
    weights: str | None

    def load(self) -> tuple[torch.nn.Module, torch.Tensor]:
        loaded = load_model(self.ref, self.input_shape, self.weights)
        return loaded.model, loaded.example_input


@dataclass(frozen=True)
class Task:
    """Everything one point needs (plain data, so it pickles to a Ray worker)."""

    point: str
    label: str
    settings: Settings
    config: AccelConfig
    model: ModelRef
    calibration: Dataset
    evaluation: Dataset
    accuracy_float: float
    scores: dict[str, np.ndarray] | None  # the saliency of `settings.prune_method`
    sensitivity: Sensitivity | None  # of `settings.widths`, for a codesign setting
    cache_dir: str | None


@dataclass(frozen=True)
class Outcome:
    """A point's row (every column of `columns.COLUMNS`) and, when it ran, its details:
    per-layer cycles, widths and kept channels (`layer_details`)."""

    row: dict[str, Any]
    details: dict[str, Any] | None


def run_point(task: Task) -> Outcome:
    """Compress, compile, measure and evaluate one point (module docstring); never raises for
    the point's own failure, which becomes its row's `error`."""
    row: dict[str, Any] = dict.fromkeys(NAMES)
    row.update(_setting_columns(task))
    start = time.perf_counter()
    try:
        with one_thread():
            torch.manual_seed(0)
            model, example = task.model.load()
            dense = _channels(model)
            compiled, quantized, finetuned = _compress(task, model, example)
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            accuracy = integer_top1(quantized, (task.evaluation.x, task.evaluation.y))
            simulate_s = time.perf_counter() - start
    except Exception as error:  # a point's failure is its row; the sweep goes on
        return Outcome({**row, "status": "error", "error": _message(error)}, None)
    stats = compiled.program.stats
    row.update(
        status="ok",
        error=None,
        cycles=stats.total_cycles,
        fps=1.0 / stats.seconds,
        energy_uj=stats.energy_pj["total"] / 1e6,
        utilization=stats.utilization,
        dram_bytes=stats.traffic_bytes["dram_read_bytes"] + stats.traffic_bytes["dram_write_bytes"],
        macs=stats.macs,
        model_bytes=sum(moved_bytes(len(s.values), s.bits) for s in compiled.program.segments),
        accuracy_integer=accuracy,
        accuracy_finetuned=finetuned,
        compile_s=compile_s,
        simulate_s=simulate_s,
    )
    return Outcome(row, layer_details(compiled, quantized, dense))


def _compress(
    task: Task, model: torch.nn.Module, example: torch.Tensor
) -> tuple[CompiledModel, ModuleOp, float | None]:
    """The compiled point, its integer IR, and the fine-tuned float top-1 (None without);
    `model` is left as it was."""
    s = task.settings
    tuned: list[torch.nn.Module] = []

    def finetune(pruned: torch.nn.Module) -> None:
        finetune_float(pruned, task.calibration, s.finetune_epochs)
        tuned.append(pruned)

    def qat(network: FakeQuantNetwork) -> None:
        finetune_integer(network, task.calibration, s.qat_epochs)

    if s.mode == "codesign":
        result = codesign(
            model,
            example,
            target=task.config,
            calibration=task.calibration.x,
            latency_budget=s.latency_budget,
            prune=s.prunes,
            bits=len(s.widths) > 1,
            finetune=finetune if s.finetune_epochs else None,
            qat=qat if s.qat_epochs else None,
            method=s.prune_method if s.prunes else "sosp-h",
            sensitivity=task.sensitivity or "hessian",
            scores=task.scores,
            widths=s.widths,
            quantize_method=s.quantize_method,
            cache_dir=task.cache_dir,
        )
        compiled, quantized = result.compiled, result.stages["quantized"]
    else:
        if s.prunes:  # the scores were given: no batches are read
            pruned = prune(model, example, [], s.prune_method, s.prune_target, scores=task.scores)
            model = pruned.model
            if s.finetune_epochs:
                finetune(model)
        w, a = s.weight_act_bits
        compiled = compile(
            model,
            example,
            target=task.config,
            calibration=task.calibration.x,
            weight_bits=w,
            act_bits=a,
            method=s.quantize_method,
        )
        quantized = compiled.ir("quantized")
        if s.qat_epochs:
            network = FakeQuantNetwork(quantized)
            qat(network)
            quantized = network.export()
            compiled = compile_module(quantized, target=task.config)
    data = (task.evaluation.x, task.evaluation.y)
    return compiled, quantized, torch_top1(tuned[0], data) if tuned else None


def layer_details(
    compiled: CompiledModel, quantized: ModuleOp, channels: dict[str, int]
) -> dict[str, Any]:
    """Per layer: cycles (first start to last end on the simulator's timeline; layers overlap,
    so they do not sum to the total), widths `wXaY`, and [kept, dense] output channels (the
    dense model's are `channels`, by module path)."""
    layers = _layers(quantized)
    return {
        "layers": [
            {"name": layer.name, "cycles": layer.cycles} for layer in compiled.program.stats.layers
        ],
        "bits": {path: f"w{w}a{a}" for path, (_, w, a) in layers.items()},
        "kept": {
            path: [shape[0], channels.get(path, shape[0])] for path, (shape, _, _) in layers.items()
        },
    }


def _channels(model: torch.nn.Module) -> dict[str, int]:
    """The output channels of each conv and linear layer of the dense torch model, by module
    path (the path its IR op carries)."""
    layers = (
        m for m in model.named_modules() if isinstance(m[1], torch.nn.Conv2d | torch.nn.Linear)
    )
    return {name: module.weight.shape[0] for name, module in layers}


def _layers(quantized: ModuleOp) -> dict[str, tuple[tuple[int, ...], int, int]]:
    """conv/linear path -> (weight shape, weight bits, input bits) of integer IR."""
    found = {}
    for op in forward(quantized, "to list its layers").body.walk():
        if isinstance(op, Conv2DOp | LinearOp):
            weight, x = op.operands[1].type, op.operands[0].type
            assert isinstance(weight, TensorType) and isinstance(x, TensorType)  # verified IR
            w, a = weight.element_type, x.element_type
            assert isinstance(w, IntegerType) and isinstance(a, IntegerType)  # quantized IR
            found[op.path.data] = (tuple(weight.get_shape()), w.bitwidth, a.bitwidth)
    return found


def _setting_columns(task: Task) -> dict[str, Any]:
    s, c = task.settings, task.config
    return {
        "point": task.point,
        "label": task.label,
        "mode": s.mode,
        "latency_budget": s.latency_budget or None,
        "prune_method": s.prune_method,
        "prune_target": s.prune_target or None,
        "bits": s.bits_column,
        "quantize_method": s.quantize_method,
        "finetune_epochs": s.finetune_epochs,
        "qat_epochs": s.qat_epochs,
        "target": c.name,
        "rows": c.rows,
        "cols": c.cols,
        "dataflow": c.dataflow,
        "scratchpad_kib": c.scratchpad_kib,
        "accumulator_kib": c.accumulator_kib,
        "dram_bytes_per_cycle": c.dram_bytes_per_cycle,
        "clock_mhz": c.clock_mhz,
        "area_mm2": c.area_mm2(),
        "accuracy_float": task.accuracy_float,
    }


def _message(error: Exception) -> str:
    """A DopantError's own message; anything else with its type and where it was raised."""
    if isinstance(error, DopantError):
        return str(error)
    where = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__}: {error} ({where.filename}:{where.lineno})"
