"""The quantization commands: `dopant calibrate`, `quantize` and `eval`.

Handlers import the compiler (xDSL, torch) when they run, so `dopant --help` stays quick.
"""

from __future__ import annotations

import argparse
import warnings
from typing import TYPE_CHECKING

from dopant.compiler.cli.options import (
    SPEC_HELP,
    Command,
    add_calibration_options,
    add_data_options,
    add_quantize_options,
    calibrate_module,
    calibration_data,
    preprocess_of,
    quantize_options,
    shows_progress,
)
from dopant.support.errors import DopantWarning

if TYPE_CHECKING:
    from xdsl.dialects.builtin import ModuleOp


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from dopant.compiler.irio import read_ir, write_ir

    module = read_ir(args.input)
    calibrate_module(module, args)
    write_ir(module, args.output)


def _cmd_quantize(args: argparse.Namespace) -> None:
    from dopant.compiler.driver import is_calibrated, quantize_network, quantize_pass
    from dopant.compiler.irio import read_ir, write_ir
    from dopant.passes.set_bits import check_layer_paths, parse_entries
    from dopant.support.errors import InputError
    from dopant.support.files import check_writable

    quantize_pass(quantize_options(args))  # every option checked before the IR is read
    parse_entries(args.override or ())
    if args.output and args.output != "-":
        check_writable(args.output)
    module = read_ir(args.input)
    check_layer_paths(module, args.override or ())
    if not args.calibration and not is_calibrated(module):
        raise InputError(
            f"{args.input} carries no activation ranges; add --calibration sample (the shipped "
            "images) or --calibration SPEC (your own), or run `dopant calibrate` first."
        )
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


def _warn_if_untrained(module: ModuleOp, name: str) -> None:
    """The import recorded where the weights came from (`qnn.weights`): say so before the
    evaluation when they are a model's initialization."""
    from xdsl.dialects.builtin import StringAttr

    from dopant.compiler.models.load import UNTRAINED, WEIGHTS_ATTR

    weights = module.attributes.get(WEIGHTS_ATTR)
    if isinstance(weights, StringAttr) and weights.data.startswith(UNTRAINED):
        warnings.warn(
            f"{name} was imported with untrained weights ({weights.data.split(': ', 1)[-1]}); "
            "its accuracy is chance: import it with --weights FILE.",
            DopantWarning,
            stacklevel=2,
        )


def _cmd_eval(args: argparse.Namespace) -> None:
    from dopant.compiler.evaluate import score
    from dopant.compiler.inputs import load_samples, model_sample_shape
    from dopant.compiler.irio import read_ir
    from dopant.support.errors import InputError

    module = read_ir(args.input)
    _warn_if_untrained(module, args.input)
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
        warnings.warn(
            f"{result.accuracy:.2%} is no better than chance for {result.classes} classes "
            f"(about {1 / result.classes:.0%}): the model may be untrained, the labels in another "
            "order than its classes, or the data normalized unlike its training data (check "
            "--mean and --std).",
            DopantWarning,
            stacklevel=2,
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
