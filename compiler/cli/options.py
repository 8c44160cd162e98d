"""What the command groups share: the `Command` a group registers its subcommands with, and the
calibration and quantization options (`quantize`, `compile`, `compare` and `import` take them).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from xdsl.dialects.builtin import ModuleOp

# command(name, handler, help) -> the subcommand's parser, for the group to add arguments to.
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
        help="bits of one layer by torch module path, e.g. conv1=w8a8, fc=w8 or layer1.0.conv1=a4 "
        "(repeatable); written on the layer as #qnn.bits<...>, as the set-bits pass does",
    )
