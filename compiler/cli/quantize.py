"""The quantization commands: `dopant calibrate`, `quantize` and `eval`.

Handlers import the compiler (xDSL, torch) when they run, so `dopant --help` stays quick.
"""

from __future__ import annotations

import argparse
import sys

from dopant.compiler.cli.options import (
    SPEC_HELP,
    Command,
    add_calibration_options,
    add_data_options,
    add_quantize_options,
    calibration_data,
    preprocess_of,
    quantize_options,
    shows_progress,
)


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from dopant.compiler.calibrate import calibrate
    from dopant.compiler.driver import CANONICAL_PIPELINE
    from dopant.compiler.irio import read_ir, write_ir
    from dopant.compiler.pipeline import run_pipeline

    module = read_ir(args.input)
    data = calibration_data(args.calibration, module, args)
    run_pipeline(module, CANONICAL_PIPELINE)
    calibrate(module, data, args.method, percentile=args.percentile, progress=shows_progress(args))
    write_ir(module, args.output)


def _cmd_quantize(args: argparse.Namespace) -> None:
    from dopant.compiler.driver import quantize_network
    from dopant.compiler.irio import read_ir, write_ir

    module = read_ir(args.input)
    data = calibration_data(args.calibration, module, args) if args.calibration else None
    quantized = quantize_network(
        module,
        data,
        method=args.method,
        percentile=args.percentile,
        progress=shows_progress(args),
        **quantize_options(args),
    )
    write_ir(quantized, args.output)


def _cmd_eval(args: argparse.Namespace) -> None:
    from dopant.compiler.evaluate import score
    from dopant.compiler.inputs import load_samples, model_sample_shape
    from dopant.compiler.irio import read_ir
    from dopant.support.errors import InputError

    module = read_ir(args.input)
    data = load_samples(
        args.data,
        model_sample_shape(module, "to evaluate"),
        split="test",
        preprocess=preprocess_of(args),
        limit=args.limit,
        show=shows_progress(args),
    )
    if data.y is None:
        raise InputError(
            f"{data.source} has no labels, so accuracy cannot be measured; give labelled "
            "data: a .npz with images 'x' and int labels 'y', or a folder of class subfolders."
        )
    result = score(module, data.x, data.y, progress=shows_progress(args))
    print(
        f"{args.input}: top-1 accuracy {result.accuracy:.2%} on {result.total} images of "
        f"{data.source}"
    )
    if result.at_chance:
        print(
            f"dopant: warning: {result.accuracy:.2%} is no better than chance for "
            f"{result.classes} classes (about {1 / result.classes:.0%}): the model may be "
            "untrained, the labels in another order than its classes, or the data normalized "
            "unlike its training data (check --mean and --std).",
            file=sys.stderr,
        )


def register(command: Command) -> None:
    """Add the quantization commands to the CLI."""
    p = command("calibrate", _cmd_calibrate, "record activation ranges in float qnn IR")
    p.add_argument("input", help="float .mlir file, or - for standard input")
    p.add_argument("--calibration", required=True, metavar="SPEC", help=SPEC_HELP)
    add_calibration_options(p)
    p.add_argument("-o", "--output", help="output .mlir file (default: standard output)")

    p = command("quantize", _cmd_quantize, "fold, calibrate and quantize to integer qnn IR")
    p.add_argument("input", help="float .mlir file, or - for standard input")
    p.add_argument(
        "--calibration", metavar="SPEC", help=f"{SPEC_HELP} (omit if already calibrated)"
    )
    add_calibration_options(p)
    add_quantize_options(p)
    p.add_argument("-o", "--output", help="output .mlir file (default: standard output)")

    p = command("eval", _cmd_eval, "top-1 accuracy of qnn IR on labelled data")
    p.add_argument("input", help=".mlir file (float or quantized)")
    p.add_argument(
        "--data",
        default="sample",
        metavar="SPEC",
        help=f"labelled data: {SPEC_HELP} (default: the shipped 1000 test images)",
    )
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
    add_data_options(p)
