"""What the arms of benchmarks/codesign.py share: the constants, the data, one model's shared work
(scores, sensitivities, the dense fine-tune), the fine-tune and the accuracy evaluation."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dopant.codesign import group_saliency
from dopant.codesign.choose import layer_paths
from dopant.codesign.pruning import Costs
from dopant.codesign.sensitivity import bit_sensitivity
from dopant.compiler.driver import quantize_network
from dopant.compiler.evaluate import BatchedRunner, top1
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.frontend import import_model
from dopant.compiler.models.datasets import Dataset
from dopant.compiler.models.train import train
from dopant.passes._prune_channels.groups import coupling_groups

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = 0.02  # the band under the budget every budgeted arm must land in
MAX_MEASUREMENTS = 16  # of the MAC-driven search
# The joint arms halve the channel step no further: ResNet-8's joint arm at 0.3x on large32 was
# still measuring its step-4 table (27 width combinations at every channel count) after 10 min.
MIN_JOINT_STEP = 8
EVAL_BATCH = 100  # FakeQuantNetwork ran fastest on small batches
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


def bits_detail(bits: dict[str, tuple[int, int]]) -> str:
    counts = Counter(f"w{w}a{a}" for w, a in bits.values())
    return " ".join(f"{k}:{n}" for k, n in sorted(counts.items(), reverse=True))


def kept_detail(kept: dict[str, int], sizes: dict[str, int]) -> str:
    return "kept " + " ".join(f"{kept[g]}/{sizes[g]}" for g in sizes)
