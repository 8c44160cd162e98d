"""`dopant calibrate`, `dopant quantize`, `dopant eval` and `dopant train`: the quantization
commands of the CLI (the parser lives in `cli.py`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from xdsl.dialects.builtin import ModuleOp

Command = Callable[[str, Callable[[argparse.Namespace], None], str], argparse.ArgumentParser]


def _sample_shape(module: ModuleOp) -> tuple[int, ...]:
    from xdsl.dialects.builtin import TensorType
    from xdsl.dialects.func import FuncOp

    fn = next(op for op in module.walk() if isinstance(op, FuncOp))
    ty = fn.body.block.args[0].type
    assert isinstance(ty, TensorType)
    return tuple(ty.get_shape()[1:])


def calibration_data(spec: str, module: ModuleOp) -> np.ndarray:
    """The calibration images `spec` names ('sample' or a .npz), checked against the model."""
    from dopant.compiler.models.datasets import load_calibration

    return load_calibration(spec, _sample_shape(module))


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from dopant.compiler.calibrate import calibrate
    from dopant.compiler.irio import read_ir, write_ir
    from dopant.compiler.pipeline import run_pipeline
    from dopant.compiler.quantization import CANONICAL

    module = read_ir(args.input)
    data = calibration_data(args.calibration, module)
    run_pipeline(module, CANONICAL)
    calibrate(module, data, args.method, percentile=args.percentile)
    write_ir(module, args.output)


def quantize_options(args: argparse.Namespace) -> dict[str, object]:
    return {
        "weight_bits": args.weight_bits,
        "act_bits": args.act_bits,
        "per_channel": not args.per_tensor,
        "rounding": args.rounding,
        "weight_clip": args.weight_clip,
        "first_last_bits": args.first_last_bits,
        "overrides": tuple(args.override or ()),
    }


def _cmd_quantize(args: argparse.Namespace) -> None:
    from dopant.compiler.irio import read_ir, write_ir
    from dopant.compiler.quantization import quantize_network

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


def _cmd_train(args: argparse.Namespace) -> None:
    from dopant.compiler.models.train import main_train

    main_train(args.model, args.epochs, args.output)


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        default="minmax",
        choices=("minmax", "percentile", "mse"),
        help="range per activation (default minmax)",
    )
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile")


def add_quantize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-bits", type=int, default=8, choices=(2, 4, 8))
    p.add_argument("--act-bits", type=int, default=8, choices=(2, 4, 8))
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per layer")
    p.add_argument("--rounding", default="gemmlowp", choices=("gemmlowp", "single"))
    p.add_argument("--weight-clip", default="minmax", choices=("minmax", "mse"))
    p.add_argument(
        "--first-last-bits",
        type=int,
        default=0,
        choices=(0, 2, 4, 8),
        help="bits of the first and last layer (0: as the others)",
    )
    p.add_argument(
        "--override",
        action="append",
        metavar="PATH=wXaY",
        help="bits of one layer by torch module path, e.g. conv1=w8a8",
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

    p = command("train", _cmd_train, "train a zoo model on Fashion-MNIST")
    p.add_argument("model", help="zoo:NAME")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("-o", "--output", required=True, help="weights .npz")
