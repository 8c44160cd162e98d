"""What the command groups share: the `Command` a group registers its subcommands with, the
data options (a SPEC and its preprocessing: `--mean`, `--std`, `--fit`), and the calibration
and quantization options (`quantize`, `compile`, `compare` and `import` take them).

A SPEC is what `dopant.compiler.inputs.load_samples` reads: `sample`, `fashion-mnist`, a .npy
or .npz file, an image file or an image folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp

if TYPE_CHECKING:
    from dopant.compiler.inputs import Preprocess

# command(name, handler, help) -> the subcommand's parser, for the group to add arguments to.
Command = Callable[[str, Callable[[argparse.Namespace], None], str], argparse.ArgumentParser]

SPEC_HELP = (
    "'sample', 'fashion-mnist', a .npy of images, a .npz with images 'x' (and labels 'y'), "
    "an image file or a folder of images (or of class subfolders)"
)


def shows_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless the global --quiet asked for silence."""
    return not getattr(args, "quiet", False)


def preprocess_of(args: argparse.Namespace) -> Preprocess:
    """The data options `add_data_options` added, as `compiler.inputs.Preprocess`."""
    from dopant.compiler.inputs import Preprocess

    return Preprocess(
        mean=getattr(args, "mean", None) or (),
        std=getattr(args, "std", None) or (),
        fit=getattr(args, "fit", "resize"),
    )


def calibration_data(spec: str, module: ModuleOp, args: argparse.Namespace) -> np.ndarray:
    """The calibration samples `spec` names, checked against the model's input and
    preprocessed by `args`' data options."""
    from dopant.compiler.inputs import load_samples, model_sample_shape

    shape = model_sample_shape(module, "to calibrate")
    return load_samples(
        spec, shape, split="calibration", preprocess=preprocess_of(args), show=shows_progress(args)
    ).x


def calibrate_module(module: ModuleOp, args: argparse.Namespace) -> None:
    """Fold and fuse float `module` (the canonical pipeline) and record the activation ranges
    of `args.calibration` in it, as `args`' calibration options say (`calibrate`, `import
    --calibration`)."""
    from dopant.compiler.calibrate import calibrate
    from dopant.compiler.driver import CANONICAL_PIPELINE
    from dopant.compiler.pipeline import run_pipeline

    data = calibration_data(args.calibration, module, args)
    run_pipeline(module, CANONICAL_PIPELINE)
    calibrate(module, data, args.method, percentile=args.percentile, progress=shows_progress(args))


def quantize_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "weight_bits": args.weight_bits,
        "act_bits": args.act_bits,
        "per_channel": not args.per_tensor,
        "rounding": args.rounding,
        "weight_clip": args.weight_clip,
        "first_last_bits": args.first_last_bits,
        "overrides": tuple(args.override or ()),
    }


def _floats(text: str) -> tuple[float, ...]:
    """'0.485,0.456,0.406' -> (0.485, 0.456, 0.406), for --mean and --std."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a list of numbers; write one per channel separated by commas, "
            "e.g. 0.5 or 0.485,0.456,0.406"
        ) from None


def add_data_options(p: argparse.ArgumentParser) -> None:
    """How data from files becomes the model's input (after uint8 pixels / 255)."""
    p.add_argument(
        "--mean",
        type=_floats,
        metavar="M[,M...]",
        help="subtract per channel after scaling uint8 to [0, 1] (one value or one per channel)",
    )
    p.add_argument(
        "--std",
        type=_floats,
        metavar="S[,S...]",
        help="then divide per channel, e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225",
    )
    p.add_argument(
        "--fit",
        default="resize",
        choices=("resize", "crop"),
        help="images of another size: resize to the model's HxW, or scale keeping the aspect "
        "ratio and cut out the center (default resize)",
    )


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        default="minmax",
        choices=("minmax", "percentile", "mse"),
        help="range per activation (default minmax)",
    )
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile")
    add_data_options(p)


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
