"""The compile commands: `dopant compile`, a model (zoo:NAME, file.py:factory or a .mlir file) to
a `.dpb` binary; `dopant compare`, the same compile, then its numerics layer by layer
(`compiler.compare`).

Handlers import the compiler (xDSL, torch) when they run, so `dopant --help` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from dopant.compiler.cli.model_options import (
    add_model_arguments,
    check_model_arguments,
    imported_module,
)
from dopant.compiler.cli.options import (
    Command,
    add_calibration_options,
    add_quantize_options,
    calibration_data,
    quantize_options,
    shows_progress,
)

if TYPE_CHECKING:
    from xdsl.dialects.builtin import ModuleOp

    from dopant.backend.target import AccelConfig
    from dopant.compiler.driver import CompiledModel


def _checked_target(args: argparse.Namespace) -> AccelConfig:
    """Every option checked before any work (the machine, its dataflow and widths, the bit
    options, the pipeline text, the files); the machine the compile targets."""
    from dopant.backend.presets import load_target

    config = load_target(args.target)  # before the imports below: a typo fails at once
    if args.dataflow:
        config = config.with_changes(dataflow=args.dataflow)
    check_model_arguments(args)

    from dopant.compiler.driver import STAGES, check_widths, quantize_pass
    from dopant.compiler.pipeline import parse
    from dopant.support.errors import InputError

    emit = getattr(args, "emit", None)
    if emit and emit not in STAGES:
        raise InputError(f"--emit {emit} is not a stage; the stages are {', '.join(STAGES)}.")

    options = quantize_options(args)
    quantize_pass(options)
    if args.pipeline is not None:
        parse(args.pipeline)
    check_widths(config, options)  # parses the --override entries too
    return config


def _needs_calibration(module: ModuleOp, args: argparse.Namespace) -> None:
    """Float IR without ranges cannot be quantized: say which option gives them."""
    from dopant.compiler.driver import is_calibrated, is_quantized
    from dopant.support.errors import InputError

    if args.calibration or is_quantized(module) or is_calibrated(module):
        return
    raise InputError(
        f"'{args.model}' is a float model without activation ranges; add --calibration sample "
        "(the shipped images) or --calibration FILE (your own images) to calibrate it."
    )


def _compiled(args: argparse.Namespace) -> tuple[CompiledModel, ModuleOp]:
    """The model `args` names, compiled as `args` say, and its imported IR."""
    config = _checked_target(args)

    from dopant.compiler.driver import compile_module
    from dopant.compiler.irio import read_ir
    from dopant.passes.set_bits import check_layer_paths

    from_ir = args.model.endswith(".mlir") or args.model == "-"
    module = read_ir(args.model) if from_ir else imported_module(args)
    check_layer_paths(module, args.override or ())
    _needs_calibration(module, args)
    data = calibration_data(args.calibration, module, args) if args.calibration else None
    compiled = compile_module(
        module,
        target=config,
        calibration=data,
        method=args.method,
        pipeline=args.pipeline,
        progress=shows_progress(args),
        **quantize_options(args),
    )
    return compiled, module


def _cmd_compile(args: argparse.Namespace) -> None:
    from dopant.compiler.irio import ir_text

    compiled, _ = _compiled(args)
    if args.output:
        compiled.save(args.output)
    if args.emit:
        sys.stdout.write(ir_text(compiled.ir(args.emit)))
    program = compiled.program
    print(
        f"{args.model} -> {args.output or '(not saved)'}: {len(program.instructions)} "
        f"instructions, {len(compiled.binary):,} bytes for '{compiled.config.name}' "
        f"({compiled.config.dataflow})",
        file=sys.stderr,
    )


def _cmd_compare(args: argparse.Namespace) -> None:
    from dopant.compiler.compare import Comparison, compare, compare_program
    from dopant.compiler.driver import check_compiled_from
    from dopant.compiler.irio import read_ir
    from dopant.runtime.loader import load
    from dopant.support.errors import DopantError, InputError

    if args.images < 1:
        raise InputError(f"--images must be at least 1, got {args.images}.")
    result: Comparison
    if args.model.endswith(".dpb"):
        if not args.ir:
            raise InputError(
                f"comparing the binary {args.model} needs --ir, the quantized .mlir it was "
                "compiled from (dopant compile --emit quantized)."
            )
        program, quantized = load(args.model), read_ir(args.ir)
        check_compiled_from(program.source, quantized, f"'{args.ir}' (--ir)")  # before the data
        images = calibration_data(args.inputs or "sample", quantized, args)[: args.images]
        result = compare_program(
            program,
            quantized,
            images,
            float_module=read_ir(args.float_ir) if args.float_ir else None,
            snr_threshold_db=args.snr_threshold,
        )
    else:
        if args.ir or args.float_ir:
            raise InputError("--ir and --float-ir go with a .dpb binary, not with a model.")
        compiled, module = _compiled(args)
        images = calibration_data(args.inputs or args.calibration or "sample", module, args)
        result = compare(compiled, images[: args.images], snr_threshold_db=args.snr_threshold)
    print(result.table())
    print(result.summary())
    mismatch = result.first_mismatch()
    if mismatch is not None:
        raise DopantError(
            f"the simulator diverges from the integer reference first at '{mismatch.name}': "
            "a compiler or simulator bug, or a binary edited by hand."
        )


def _add_compile_options(p: argparse.ArgumentParser, also: str = "") -> None:
    add_model_arguments(p, f"zoo:NAME, path/to/file.py:factory, or a .mlir file{also}")
    p.add_argument("--target", default="edge16", help="preset (small8, edge16, large32) or .toml")
    p.add_argument("--dataflow", choices=("ws", "os"), help="override the target's dataflow")
    p.add_argument("--calibration", help="calibration data (float models): a SPEC as for calibrate")
    p.add_argument(
        "--pipeline",
        help="passes for the canonical stage instead of 'fold-batchnorm{strict=true},"
        "fuse-activation' (float models)",
    )
    add_calibration_options(p)
    add_quantize_options(p)


def register(command: Command) -> None:
    """Add the compile commands to the CLI."""
    p = command("compile", _cmd_compile, "compile a model to an accelerator binary (.dpb)")
    _add_compile_options(p)
    p.add_argument("-o", "--output", help="output .dpb file")
    p.add_argument("--emit", metavar="STAGE", help="print the IR after STAGE to standard output")

    p = command(
        "compare",
        _cmd_compare,
        "compare every layer: simulator vs integer reference vs float (a model, or a .dpb)",
    )
    _add_compile_options(p, ", or a .dpb binary (with --ir)")
    p.add_argument(
        "--inputs", help="data to compare on, a SPEC as for calibrate (default: calibration)"
    )
    p.add_argument("--ir", help="with a .dpb MODEL: the quantized .mlir it was compiled from")
    p.add_argument("--float-ir", help="with a .dpb MODEL: the float .mlir, for the SNR column")
    p.add_argument("--images", type=int, default=4, help="how many images to compare on")
    p.add_argument(
        "--snr-threshold",
        type=float,
        default=20.0,
        help="report the first layer whose SNR against float is below this many dB",
    )
