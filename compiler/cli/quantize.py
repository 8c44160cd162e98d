"""The quantization commands: `dopant calibrate`, `quantize` and `eval`.

Handlers import the compiler (xDSL, torch) when they run, so `dopant --help` stays quick.
"""

from __future__ import annotations

import argparse

from dopant.compiler.cli.options import (
    Command,
    add_calibration_options,
    add_quantize_options,
    calibration_data,
    quantize_options,
)


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from dopant.compiler.calibrate import calibrate
    from dopant.compiler.driver import CANONICAL_PIPELINE
    from dopant.compiler.irio import read_ir, write_ir
    from dopant.compiler.pipeline import run_pipeline

    module = read_ir(args.input)
    data = calibration_data(args.calibration, module)
    run_pipeline(module, CANONICAL_PIPELINE)
    calibrate(module, data, args.method, percentile=args.percentile)
    write_ir(module, args.output)


def _cmd_quantize(args: argparse.Namespace) -> None:
    from dopant.compiler.driver import quantize_network
    from dopant.compiler.irio import read_ir, write_ir

    module = read_ir(args.input)
    data = calibration_data(args.calibration, module) if args.calibration else None
    quantized = quantize_network(
        module, data, method=args.method, percentile=args.percentile, **quantize_options(args)
    )
    write_ir(quantized, args.output)


def _cmd_eval(args: argparse.Namespace) -> None:
    from dopant.compiler.evaluate import accuracy
    from dopant.compiler.irio import read_ir
    from dopant.compiler.models.datasets import load_fashion_mnist, load_sample

    module = read_ir(args.input)
    data = load_sample()[1] if args.data == "sample" else load_fashion_mnist("test")
    if args.limit:
        data = data.subset(args.limit)
    print(
        f"{args.input}: top-1 accuracy {accuracy(module, data.x, data.y):.2%} on "
        f"{len(data)} {args.data} test images"
    )


def register(command: Command) -> None:
    """Add the quantization commands to the CLI."""
    p = command("calibrate", _cmd_calibrate, "record activation ranges in float qnn IR")
    p.add_argument("input", help="float .mlir file, or - for standard input")
    p.add_argument("--calibration", required=True, help="'sample' or a .npz with images 'x'")
    add_calibration_options(p)
    p.add_argument("-o", "--output", help="output .mlir file (default: standard output)")

    p = command("quantize", _cmd_quantize, "fold, calibrate and quantize to integer qnn IR")
    p.add_argument("input", help="float .mlir file, or - for standard input")
    p.add_argument("--calibration", help="'sample' or a .npz (omit if already calibrated)")
    add_calibration_options(p)
    add_quantize_options(p)
    p.add_argument("-o", "--output", help="output .mlir file (default: standard output)")

    p = command("eval", _cmd_eval, "top-1 accuracy of qnn IR on Fashion-MNIST")
    p.add_argument("input", help=".mlir file (float or quantized)")
    p.add_argument(
        "--data",
        default="sample",
        choices=("sample", "fashion-mnist"),
        help="the shipped 1000-image sample or the full 10k test set",
    )
    p.add_argument("--limit", type=int, default=0, help="use only the first N images")
