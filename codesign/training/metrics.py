"""`HardwareMetrics`: a callback for a plain PyTorch training loop that measures the current
model on the modeled accelerator at the end of an epoch.

    hardware = HardwareMetrics("edge16", x[:1], calibration=x[:64], csv="hardware.csv")
    for epoch in range(epochs):
        train_one_epoch(model)
        sample = hardware(model, epoch)  # a HardwareSample; None between every-th epochs
    print(hardware.summary())

A measured call runs what `compile(model, ...)` runs, up to the timing model, on the model as it
is now:

    import      torch.export of the model in eval mode (`frontend.import_model`); afterwards
                every module's train/eval flag is restored and nothing else of the model changes
    quantize    the canonical passes (batch norm folded), calibration on `calibration`, quantize
                (`driver.quantize_network`)
    measure     the timing model (`driver.latency`): cycles, utilization, energy and DRAM bytes
                for one image, equal to `compile(model, ...).program.stats` (tested)
    values      with `values=True` only: the full compile (`driver.compile_module`), whose
                program's stats are reported, and the functional simulator on a few calibration
                images, checked bit for bit against the integer reference

then appends the sample to the CSV file and, if asked, to TensorBoard. The timing model's numbers
depend on the layer shapes and bit widths, not on the weights: they move when training changes
the network (pruning, bit widths), and the callback is how the training loop sees that.

A model the target cannot take (an op the frontend does not import, a layer no tiling fits)
gives, with `on_error="warn"`, a `DopantWarning` naming the layer and a sample whose `error` says
why (its row in the CSV too), and training goes on; with `on_error="raise"` the error itself,
before anything of that epoch is written. The cost of a call, mostly `torch.export`, is in each
sample (`overhead_seconds`) and in `summary()`.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dopant.backend.presets import load_target
from dopant.backend.target import AccelConfig
from dopant.codesign.finish import check_bit_exact
from dopant.codesign.training.logs import (
    SCALARS,
    CsvLog,
    HardwareSample,
    add_to_tensorboard,
    tensorboard_writer,
)
from dopant.compiler.driver import (
    check_widths,
    compile_module,
    latency,
    quantize_network,
    quantize_pass,
)
from dopant.compiler.frontend import import_model
from dopant.dialects.qnn.attrs import CALIBRATION_METHODS
from dopant.runtime.stats import RunStats
from dopant.support.errors import DopantError, DopantWarning, InputError

ON_ERROR = ("warn", "raise")
VALUE_IMAGES = 8  # calibration images the functional simulator checks with values=True
DEFAULT_CSV = "hardware_metrics.csv"


class HardwareMetrics:
    """Measure a torch model on `target` each `every`-th epoch of a training loop; module doc.

    `target`: a preset name ("edge16"), a .toml path or an `AccelConfig`. `example_inputs`: one
    input tensor (batch 1 is enough; the program computes one image). `calibration`: images
    (N, C, H, W) as an array or tensor, for the quantizer's ranges and the `values` check (a few
    dozen are plenty; the timing does not depend on them). `every`: epochs whose number is a
    multiple of it are measured, the others return None at no cost. `csv`: the log file (None:
    no file); `append` keeps the rows of an existing log with the same header. `tensorboard`: a
    log folder or a SummaryWriter the loop already uses (scalars `hardware/cycles`, `.../fps`,
    ...). `weight_bits`, `act_bits`, `method` and `quantize_options` (`overrides=("conv1=w4",)`,
    `per_channel`, ...) are `compile()`'s. `values`: also compile the binary and check its
    outputs on a few calibration images against the integer reference. `on_error`: "warn" or
    "raise" (module doc). `log`: called with one line per sample (`log=print`).

    Options are checked here, before any training: a DopantError (InputError, or ConfigError
    for the target) names the one at fault.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | AccelConfig,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        calibration: Any,
        *,
        every: int = 1,
        csv: str | os.PathLike[str] | None = DEFAULT_CSV,
        append: bool = False,
        tensorboard: Any = None,
        weight_bits: int = 8,
        act_bits: int = 8,
        method: str = "minmax",
        values: bool = False,
        on_error: str = "warn",
        log: Callable[[str], None] | None = None,
        **quantize_options: Any,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InputError(f"every must be a positive number of epochs, got {every!r}.")
        if on_error not in ON_ERROR:
            raise InputError(f"on_error is 'warn' or 'raise', got {on_error!r}.")
        if method not in CALIBRATION_METHODS:
            raise InputError(
                f"calibration method '{method}' is not known; use one of "
                f"{', '.join(CALIBRATION_METHODS)}."
            )
        self.config = target if isinstance(target, AccelConfig) else load_target(str(target))
        self.example_input = _example_input(example_inputs)
        self.calibration = _images(calibration, self.example_input)
        self.options = {"weight_bits": weight_bits, "act_bits": act_bits, **quantize_options}
        quantize_pass(self.options)  # the options' names and values
        check_widths(self.config, self.options)  # entries; warns once here, not every epoch
        self.method = method
        self.every = every
        self.values = bool(values)
        self.on_error = on_error
        self.log = log
        self.csv = None if csv is None else CsvLog(csv, append=append)
        self._writer: Any = None  # a SummaryWriter, or the loop's own writer
        self._owns_writer = False
        if tensorboard is not None:
            self._writer, self._owns_writer = tensorboard_writer(tensorboard)
        self.samples: list[HardwareSample] = []

    # ---- the callback ----------------------------------------------------------------------

    def __call__(self, model: nn.Module, epoch: int) -> HardwareSample | None:
        """The sample of `model` at the end of `epoch` if `epoch` is a multiple of `every`,
        else None (without any work)."""
        epoch = _check_epoch(epoch)
        return self.measure(model, epoch) if epoch % self.every == 0 else None

    def measure(self, model: nn.Module, epoch: int) -> HardwareSample:
        """Measure `model` now, whatever `every` says; log and return the sample."""
        epoch = _check_epoch(epoch)
        if not isinstance(model, nn.Module):
            raise InputError(f"the model is a {type(model).__name__}, not a torch nn.Module.")
        start = time.perf_counter()
        try:
            stats, bit_exact = self._measure(model)
        except Exception as error:  # a failed measurement must not end the training run
            if self.on_error == "raise":
                error.add_note(f"(hardware metrics of epoch {epoch} on '{self.config.name}')")
                raise
            reason = str(error) if isinstance(error, DopantError) else _unexpected(error)
            warnings.warn(
                f"hardware metrics of epoch {epoch} on '{self.config.name}' failed, training "
                f"goes on: {reason}",
                DopantWarning,
                stacklevel=3,
            )
            seconds = time.perf_counter() - start
            sample = HardwareSample.failed(epoch, self.config.name, reason, seconds)
        else:
            seconds = time.perf_counter() - start
            sample = HardwareSample.measured(epoch, stats, bit_exact, seconds)
        self._record(sample)
        return sample

    def _measure(self, model: nn.Module) -> tuple[RunStats, bool | None]:
        """The timing model's statistics of `model` (and whether its binary's outputs were
        checked); the model's train/eval flags and the global torch RNG are left as they were."""
        with torch.random.fork_rng(devices=[]):  # import_model puts the train/eval flags back
            imported = import_model(_on_cpu(model), self.example_input)
            quantized = quantize_network(
                imported, self.calibration, method=self.method, **self.options
            )
            if not self.values:
                return latency(quantized, self.config), None
            compiled = compile_module(quantized, target=self.config)
            check_bit_exact(compiled, quantized, self.calibration[:VALUE_IMAGES])
            return compiled.program.stats, True

    def _record(self, sample: HardwareSample) -> None:
        self.samples.append(sample)
        if self.csv is not None:
            self.csv.add(sample)
        if self._writer is not None:
            add_to_tensorboard(self._writer, sample, SCALARS)
        if self.log is not None:
            self.log(sample.line())

    # ---- reporting ---------------------------------------------------------------------------

    @property
    def mean_overhead_seconds(self) -> float:
        """The mean wall time of the measured calls (0 before the first)."""
        if not self.samples:
            return 0.0
        return sum(s.overhead_seconds for s in self.samples) / len(self.samples)

    def summary(self) -> str:
        """A few lines: how many samples (and failures), the cost per call, the last sample."""
        failed = sum(not s.ok for s in self.samples)
        if not self.samples:
            return f"hardware metrics on '{self.config.name}': no sample yet."
        overheads = [s.overhead_seconds for s in self.samples]
        lines = [
            f"hardware metrics on '{self.config.name}': {len(self.samples)} sample(s)"
            + (f", {failed} failed" if failed else "")
            + f"; overhead per call {self.mean_overhead_seconds:.2f} s mean, "
            f"{max(overheads):.2f} s max",
            self.samples[-1].line(),
        ]
        if self.csv is not None:
            lines.append(f"CSV log: {self.csv.path}")
        return "\n".join(lines)

    def close(self) -> None:
        """Close the TensorBoard writer this callback opened (one it was given stays open)."""
        if self._writer is not None and self._owns_writer:
            self._writer.close()
        self._writer = None

    def __enter__(self) -> HardwareMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        raise InputError(f"epoch is a number from 0 on, got {epoch!r}.")
    return int(epoch)


def _unexpected(error: Exception) -> str:
    return f"{type(error).__name__}: {error} (unexpected: please report it with this model)"


def _example_input(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The one float32 input tensor, detached, on the CPU."""
    inputs = [example_inputs] if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, Sequence) or len(inputs) != 1:
        raise InputError(
            "example_inputs is one input tensor (the calibration feeds a single input), got "
            f"{type(example_inputs).__name__}"
            + (f" of {len(inputs)}" if isinstance(inputs, Sequence) else "")
            + "."
        )
    (x,) = inputs
    if not isinstance(x, torch.Tensor):
        raise InputError(f"the example input is a {type(x).__name__}, not a torch.Tensor.")
    if not x.is_floating_point() or x.ndim < 2:
        raise InputError(
            "the example input is a float tensor with a batch axis, such as images[:1], got "
            f"{x.dtype} of shape {list(x.shape)}."
        )
    return x.detach().to("cpu", torch.float32)


def _images(calibration: Any, example: torch.Tensor) -> np.ndarray:
    """The calibration images as one float32 array shaped like the example input's samples."""
    if isinstance(calibration, torch.Tensor):
        calibration = calibration.detach().cpu().numpy()
    if not isinstance(calibration, np.ndarray) or len(calibration) == 0:
        raise InputError(
            "calibration is images as an array or tensor of shape (N, C, H, W) with N >= 1, "
            f"got {type(calibration).__name__}"
            + (f" of shape {calibration.shape}" if isinstance(calibration, np.ndarray) else "")
            + "."
        )
    if calibration.shape[1:] != tuple(example.shape[1:]):
        raise InputError(
            f"calibration samples have shape {list(calibration.shape[1:])} but the example "
            f"input's are {list(example.shape[1:])}; give images of the model's input shape."
        )
    return np.ascontiguousarray(calibration, dtype=np.float32)


def _on_cpu(model: nn.Module) -> nn.Module:
    """The module torch.export should trace: `model` itself when its tensors are float32 on the
    CPU, else a float32 CPU copy (the training copy stays where it is). A DataParallel or
    DistributedDataParallel wrapper is looked through."""
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        model = model.module
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" and t.dtype in _KEPT for t in tensors):
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


_KEPT = (torch.float32, torch.int64, torch.bool)  # dtypes import takes as they are (BN counts)
