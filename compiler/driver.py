"""The compiler driver: `compile(model, example_inputs, target=..., calibration=...)`.

It reads as its stages, in order, each one's IR kept and dumpable (`CompiledModel.ir(stage)`,
`dopant compile --emit STAGE`):

    imported    torch.export -> qnn                        (frontend.import_model)
    canonical   fold-batchnorm, fuse-activation            (or the caller's `pipeline`)
    calibrated  activation ranges from sample data         (calibrate)
    quantized   quantize                                   (integer-only qnn)
    tiled       set-batch{size=1}, tile                    (tile plans; the target on the module)
    accel       convert-qnn-to-accel                       (one op per instruction)
    binary      emit                                       (.dpb bytes)

A program computes one image: IR imported at batch N is compiled at batch 1 (`set-batch`), and
`Program.run` takes N images at once, running them as one vectorized loop on the simulator.

When a pass fails, the IR before it is written to a file and the error names the stage, the
pass, that file and the `dopant opt` command that reproduces the failure.

`quantize_network(module, data, ...)` runs only the float stages and `quantize`, for accuracy
work on the integer network without a target; `latency(quantized, target)` only what the
timing model needs, for the co-design loop's many latency queries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.passes import ModulePass

from dopant.backend.config_attr import set_module_source, set_module_target
from dopant.backend.emit import emit_binary, layer_gemm, layer_ranges
from dopant.backend.presets import load_target
from dopant.backend.target import AccelConfig
from dopant.compiler.calibrate import CALIBRATION_ATTR, calibrate
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text
from dopant.compiler.pipeline import parse, run_pipeline
from dopant.dialects.context import make_context
from dopant.dialects.qnn import QnnOp
from dopant.dialects.qnn.base import forward, is_float
from dopant.passes.convert_qnn_to_accel import lower_network
from dopant.passes.quantize import QuantizePass
from dopant.passes.set_bits import parse_entries
from dopant.passes.tile import TilePass
from dopant.runtime.loader import load
from dopant.runtime.program import Program, RunResult
from dopant.runtime.stats import RunStats, run_stats
from dopant.runtime.timing import schedule
from dopant.support.errors import DopantError, DopantWarning, InputError
from dopant.support.files import write_atomic
from dopant.support.progress import Steps

STAGES = ("imported", "canonical", "calibrated", "quantized", "tiled", "accel")
CANONICAL_PIPELINE = "fold-batchnorm{strict=true},fuse-activation"


class CompileError(DopantError):
    """A stage that failed; names the stage, the pass and where the IR before it was saved."""


@dataclass
class CompiledModel:
    """A network compiled for one machine: its binary and the IR of every stage."""

    config: AccelConfig
    binary: bytes
    stages: dict[str, ModuleOp] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    _program: Program | None = None

    def ir(self, stage: str) -> ModuleOp:
        """The IR after `stage` (one of STAGES)."""
        if stage not in self.stages:
            raise DopantError(f"no stage '{stage}'; this compile kept {', '.join(self.stages)}.")
        return self.stages[stage]

    def save(self, path: str | Path) -> None:
        write_atomic(path, self.binary)

    @property
    def program(self) -> Program:
        if self._program is None:
            self._program = load(self.binary, self.config)
        return self._program

    def run(self, *inputs: np.ndarray, trace: bool = False, values: bool = False) -> RunResult:
        """Run the binary on the simulated accelerator (float inputs, dequantized outputs;
        `values` keeps every layer's integer output, as `Program.run`)."""
        return self.program.run(*inputs, trace=trace, values=values)


def quantize_pass(options: dict[str, Any]) -> QuantizePass:
    """The quantize pass with `options` (QuantizePass's fields); bad option names fail here,
    before any work."""
    names = [f.name for f in dataclasses.fields(QuantizePass)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise InputError(
            f"unknown quantize option(s) {unknown}; the options are {', '.join(names)}."
        )
    quantizer = QuantizePass(**options)
    quantizer.check_options()
    return quantizer


def check_widths(config: AccelConfig, options: dict[str, Any]) -> None:
    """Warn (DopantWarning) for each bit width in the quantize `options` that `config`'s array
    does not fuse to: the layer runs on the next wider lanes, its values still at their width
    (same results, no speedup). Runs before any work, from the options alone."""
    wanted = {
        "weight": {options.get("weight_bits", 8), options.get("first_last_bits") or 8},
        "activation": {options.get("act_bits", 8), options.get("first_last_bits") or 8},
    }
    for _, _, w, a in parse_entries(options.get("overrides", ())):
        wanted["weight"] |= {w} - {0}  # 0: the entry leaves this width to the defaults
        wanted["activation"] |= {a} - {0}
    for kind, widths in wanted.items():
        has = config.weight_bits if kind == "weight" else config.act_bits
        for bits in sorted(b for b in widths if b not in has):
            wider = next((w for w in sorted(has) if w > bits), None)
            warnings.warn(
                f"'{config.name}' has no {bits}-bit {kind} lanes (it fuses to "
                f"{', '.join(map(str, has))} bits): {bits}-bit {kind}s run on its "
                f"{wider}-bit lanes, with the same results and no speedup.",
                DopantWarning,
                stacklevel=1,
            )


def quantize_network(
    module: ModuleOp,
    data: Any,
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    progress: bool = False,
    **options: Any,
) -> ModuleOp:
    """A quantized copy of float `module` (the canonical, calibrated and quantized stages);
    `module` itself is left as it was.

    With `data` (what `calibrate` takes: an array of samples or an iterable of batches such as
    a DataLoader) the copy is calibrated on it, with a bar if `progress` (else it must carry
    calibration ranges already);
    `options` are QuantizePass's (`weight_bits`, `act_bits`, `per_channel`, `rounding`,
    `weight_clip`, `first_last_bits`, `output_bits`, `overrides`).
    """
    quantizer = quantize_pass(options)
    copy = module.clone()
    run_pipeline(copy, CANONICAL_PIPELINE)
    if data is not None:
        calibrate(copy, data, method, percentile=percentile, progress=progress)
    run_pipeline(copy, [quantizer])
    return copy


def _pass_text(p: ModulePass) -> str:
    return str(p.spec()) if hasattr(p, "spec") else p.name


def _run_stage(stage: str, module: ModuleOp, passes: Sequence[ModulePass]) -> None:
    """Run `passes` one by one; on failure save the IR before the failing pass."""
    for p in passes:
        before = module.clone()
        try:
            run_pipeline(module, [p])
        except DopantError as error:
            folder = Path(tempfile.mkdtemp(prefix="dopant-"))
            saved = folder / f"before-{p.name}.mlir"
            write_atomic(saved, ir_text(before))
            raise CompileError(
                f"stage '{stage}' failed in pass '{p.name}': {error} The IR before that pass "
                f"is in {saved}; reproduce with: dopant opt {saved} -p '{_pass_text(p)}'"
            ) from error


def input_batch(module: ModuleOp) -> int:
    """The leading (batch) axis of `@forward`'s first argument."""
    arg_type = forward(module, "to compile").body.block.args[0].type
    assert isinstance(arg_type, TensorType)
    return arg_type.get_shape()[0]


def source_digest(module: ModuleOp) -> str:
    """'sha256:' and the digest of `module`'s IR text: what a binary records of the quantized
    IR it was compiled from (`dopant compile --emit quantized` prints that text)."""
    return "sha256:" + hashlib.sha256(ir_text(module).encode()).hexdigest()


def check_compiled_from(program_source: str, quantized: ModuleOp, ir_name: str) -> None:
    """InputError if the binary recorded a source digest and `quantized` is not that IR."""
    if program_source and program_source != source_digest(quantized):
        raise InputError(
            f"{ir_name} is not the IR this binary was compiled from (the binary records the "
            "digest of its quantized IR, and this one differs); give the IR that "
            "`dopant compile ... --emit quantized` printed for it."
        )


def is_quantized(module: ModuleOp) -> bool:
    """Whether `module` holds integer layers (quantize has run)."""
    return any(isinstance(op, QnnOp) and not is_float(op.results[0]) for op in module.walk())


def is_calibrated(module: ModuleOp) -> bool:
    """Whether float `module` carries activation ranges (calibrate has run)."""
    return CALIBRATION_ATTR in module.attributes


def compile_module(
    module: ModuleOp,
    *,
    target: str | AccelConfig = "edge16",
    calibration: Any = None,
    method: str = "minmax",
    dataflow: str | None = None,
    pipeline: str | None = None,
    progress: bool = False,
    **quantize_options: Any,
) -> CompiledModel:
    """Compile float (or already quantized) `qnn` IR for `target`; see the module docstring.
    With `progress`, a bar on a terminal's standard error counts the stages.

    Float IR needs `calibration` samples unless it carries calibration ranges: an array
    (N, C, H, W) or an iterable of batches, as `calibrate` takes them (`progress`: a bar).
    `pipeline` replaces the canonical stage's passes (CANONICAL_PIPELINE), to add passes of
    one's own before calibration; it must leave what `quantize` accepts (no batch norm).
    `quantize_options` are QuantizePass's (weight_bits, act_bits, overrides, ...).
    """
    config = target if isinstance(target, AccelConfig) else load_target(target)
    if dataflow:
        config = config.with_changes(dataflow=dataflow)
    quantizer = quantize_pass(quantize_options)
    check_widths(config, quantize_options)
    stages: dict[str, ModuleOp] = {}
    seconds: dict[str, float] = {}
    module = module.clone()
    steps = Steps(len(STAGES) - 1, show=progress, what="compile")  # the stages after imported
    start = time.perf_counter()

    def keep(stage: str) -> None:
        """Record the stage's wall time and its IR (the copy is not timed)."""
        nonlocal start
        seconds[stage] = time.perf_counter() - start
        stages[stage] = module.clone()
        steps.done(stage)
        start = time.perf_counter()

    stages["imported"] = module.clone()
    quantized = is_quantized(module)
    if quantized and pipeline is not None:
        raise CompileError(
            "the input IR is already quantized, so the float pipeline "
            f"'{pipeline}' cannot run on it; pass float IR or leave pipeline out."
        )
    if not quantized:
        _run_stage("canonical", module, parse(CANONICAL_PIPELINE if pipeline is None else pipeline))
        keep("canonical")
        if calibration is not None:
            calibrate(module, calibration, method, progress=progress)
        keep("calibrated")
        _run_stage("quantized", module, [quantizer])
    keep("quantized")
    set_module_source(module, source_digest(stages["quantized"]))
    if input_batch(module) != 1:  # one program per image; the simulator loops over a batch
        run_pipeline(module, "set-batch{size=1}")
    set_module_target(module, config)  # the machine travels in the IR, reproducers included
    _run_stage("tiled", module, [TilePass()])
    keep("tiled")
    _run_stage("accel", module, parse("convert-qnn-to-accel"))
    keep("accel")
    binary = emit_binary(stages["accel"])
    seconds["binary"] = time.perf_counter() - start
    steps.close()
    return CompiledModel(config, binary, stages, seconds)


def latency(module: ModuleOp, target: str | AccelConfig = "edge16") -> RunStats:
    """The timing model's statistics of quantized `module` on `target`: the latency oracle.

    The same cycles, per layer and in total, as `compile_module(module, target=...)
    .program.stats` (tested), computed on one working copy of the IR with only what the timing
    model reads: `tile`, then the lowering's instructions with their tokens. It skips building
    `accel` ops, segment bytes and the binary, the loader's checks, the functional simulator,
    IR text, verification between passes and the per-stage copies of `compile_module`. Tile
    plans are cached by layer shape and machine, so repeated queries of one network are cheap.
    Fails like `tile` and `convert-qnn-to-accel` do, and on float IR (quantize it first).
    """
    config = target if isinstance(target, AccelConfig) else load_target(target)
    if not is_quantized(module):
        raise CompileError(
            "latency needs quantized qnn IR; run quantize_network (or dopant quantize) first."
        )
    work = module.clone()
    TilePass(config).apply(make_context(), work)
    lowering = lower_network(work)
    timed = lowering.instructions()
    instructions = tuple(instruction for instruction, _ in timed)
    layers = layer_ranges([path for _, path in timed])
    gemms = [layer_gemm(op) for op in lowering.layers]
    return run_stats(instructions, layers, gemms, config, schedule(instructions, config))


def compile(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    target: str | AccelConfig = "edge16",
    calibration: Any = None,
    weight_bits: int = 8,
    act_bits: int = 8,
    method: str = "minmax",
    pipeline: str | None = None,
    **options: Any,
) -> CompiledModel:
    """Compile a torch model for `target`, calibrating on `calibration` (N, C, H, W samples,
    or an iterable of batches such as a DataLoader).

    `pipeline` replaces the canonical passes (see `compile_module`); `options` are
    `compile_module`'s `dataflow` and QuantizePass's options.
    """
    if calibration is None:
        raise CompileError(
            "compile needs calibration samples to quantize the model; pass "
            "calibration=<array of shape (N, C, H, W)>."
        )
    start = time.perf_counter()
    module = import_model(model, example_inputs)
    import_seconds = time.perf_counter() - start
    compiled = compile_module(
        module,
        target=target,
        calibration=calibration,
        method=method,
        weight_bits=weight_bits,
        act_bits=act_bits,
        pipeline=pipeline,
        **options,
    )
    compiled.stage_seconds = {"imported": import_seconds, **compiled.stage_seconds}
    return compiled
