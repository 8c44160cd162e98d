"""Running IR on whole data sets: batched reference runs, accuracy (on an array with labels or
on any iterable of (x, y) batches, `compiler.inputs`), and per-layer SNR of a quantized network
against its float original."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.inputs import batches, model_sample_shape
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import QnnOp
from dopant.dialects.qnn.values import output_params, requantized_path
from dopant.runtime import intops, reference
from dopant.support.errors import InputError


class BatchedRunner:
    """Runs `@forward` of a module on any number of samples, `batch_size` at a time; the IR is
    re-batched once per chunk size (`set-batch`) and cached."""

    def __init__(self, module: ModuleOp, batch_size: int = 256):
        self.module = module
        self.batch_size = batch_size
        self._by_size: dict[int, ModuleOp] = {}

    def module_for(self, size: int) -> ModuleOp:
        """The module re-batched to `size` samples."""
        if size not in self._by_size:
            clone = self.module.clone()
            run_pipeline(clone, f"set-batch{{size={size}}}")
            self._by_size[size] = clone
        return self._by_size[size]

    def run(self, x: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, len(x), self.batch_size):
            chunk = np.ascontiguousarray(x[start : start + self.batch_size], dtype=np.float32)
            outputs.append(reference.run(self.module_for(len(chunk)), chunk)[0])
        return np.concatenate(outputs)

    def trace(self, x: np.ndarray) -> dict[str, np.ndarray]:
        chunk = np.ascontiguousarray(x, dtype=np.float32)
        return reference.trace(self.module_for(len(chunk)), chunk)


@dataclass(frozen=True)
class Score:
    """Top-1 hits of a classifier over labelled samples, and how many logits it gives."""

    correct: int
    total: int
    classes: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def at_chance(self) -> bool:
        """Accuracy no better than guessing (below 1.5 / classes): an untrained model, or data
        preprocessed unlike its training data."""
        return self.classes >= 2 and self.accuracy < 1.5 / self.classes


def score(
    module: ModuleOp,
    data: Any,
    labels: Any = None,
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> Score:
    """Top-1 hits of `module`'s logits, (N, classes), on labelled samples: an array (or
    tensor) `data` with `labels`, or an iterable of (x, y, ...) batches such as a torch
    DataLoader. `progress` draws a bar on a terminal. InputError names the batch at fault."""
    sample = model_sample_shape(module, "to evaluate")
    runner = BatchedRunner(module, batch_size)
    correct = total = classes = 0
    found = batches(
        data,
        sample,
        source="evaluation data",
        size=batch_size,
        labels=labels,
        need_labels=True,
        show=progress,
        bar="evaluating",
    )
    for batch in found:
        assert batch.y is not None, "need_labels gives every batch labels"
        logits = runner.run(batch.x)
        if logits.ndim != 2:
            raise InputError(
                f"accuracy needs a model giving logits of shape [N, classes]; this one gives "
                f"{list(logits.shape)} for {len(batch.x)} samples."
            )
        classes = logits.shape[1]
        if batch.y.max() >= classes:
            raise InputError(
                f"the evaluation data holds label {int(batch.y.max())}, but the model gives "
                f"{classes} logits (labels 0..{classes - 1}); check the labels."
            )
        correct += int(np.sum(logits.argmax(axis=1) == batch.y))
        total += len(batch.x)
    return Score(correct, total, classes)


def accuracy(
    module: ModuleOp,
    data: Any,
    labels: Any = None,
    batch_size: int = 256,
    *,
    progress: bool = False,
) -> float:
    """Top-1 accuracy of `module`'s logits on samples `data` with `labels`, or on an iterable
    of (x, y) batches (`score`)."""
    return score(module, data, labels, batch_size=batch_size, progress=progress).accuracy


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    """The share of samples whose largest logit is at their label."""
    return float(np.mean(logits.argmax(axis=1) == y))


def snr_db(signal: np.ndarray, approx: np.ndarray) -> float:
    """10 log10(sum x^2 / sum (x - x_hat)^2); +inf for an exact copy."""
    noise = float(np.sum((signal.astype(np.float64) - approx) ** 2))
    power = float(np.sum(signal.astype(np.float64) ** 2))
    return math.inf if noise == 0.0 else 10.0 * math.log10(max(power, 1e-300) / noise)


def layer_snr(
    float_module: ModuleOp, quantized: ModuleOp, x: np.ndarray
) -> list[tuple[str, float]]:
    """SNR (dB) of each layer's dequantized integer output against the float output, in order.

    A float op at path P corresponds to the integer value of `P/requantize` (conv, linear) or
    of P itself (add, pools, reshape, concat), dequantized with its parameters.
    """
    want = BatchedRunner(float_module, len(x)).trace(x)
    runner = BatchedRunner(quantized, len(x))
    got = runner.trace(x)
    producers = {
        op.path.data: op for op in runner.module_for(len(x)).walk() if isinstance(op, QnnOp)
    }
    rows = []
    for path, value in want.items():
        key = requantized_path(path) if requantized_path(path) in got else path
        if key not in got or key not in producers:
            continue
        params = output_params(producers[key].results[0])
        if params is None:
            continue
        real = intops.dequantize(got[key], params.scales[0], params.zero_points[0])
        rows.append((path, snr_db(value, real)))
    return rows
