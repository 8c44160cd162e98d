"""What the commands that take a model share: the `model`, `--input-shape` and `--weights`
arguments, and the model they name imported to `qnn` IR with where its weights came from
recorded on the module (`qnn.weights`, which `dopant eval` reads to warn about an untrained
model)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xdsl.dialects.builtin import ModuleOp

    from dopant.compiler.models.load import LoadedModel


def add_model_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """The model reference, its input shape and its weights file."""
    p.add_argument("model", help=what)
    p.add_argument("--input-shape", help="input shape such as 1,3,32,32 (zoo models have one)")
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="weights to load: a torch state dict (.pt/.pth, read with weights_only=True) or a "
        "dopant .npz (`dopant train -o`); zoo:lenet5 and zoo:resnet8 default to their shipped "
        "Fashion-MNIST weights, other models to their initialization (with a warning)",
    )


def check_model_arguments(args: argparse.Namespace) -> None:
    """The checks that need no work: the shape parses, the weights file exists, the output
    can be written."""
    from dopant.compiler.models.load import parse_shape
    from dopant.support.errors import InputError
    from dopant.support.files import check_writable

    if getattr(args, "output", None) and args.output != "-":
        check_writable(args.output)
    if args.input_shape:
        parse_shape(args.input_shape)
    if args.weights and args.model.endswith(".mlir"):
        raise InputError(
            f"--weights goes with a model (zoo:NAME or file.py:factory), not with the IR file "
            f"'{args.model}', whose weights are already in it."
        )
    if args.weights and not Path(args.weights).is_file():
        raise InputError(f"weights file '{args.weights}' (--weights) does not exist.")


def loaded_model(args: argparse.Namespace) -> LoadedModel:
    """The torch model `args.model` names, with its weights and example input."""
    from dopant.compiler.models.load import load_model, parse_shape

    shape = parse_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, shape, args.weights)


def imported_module(args: argparse.Namespace, loaded: LoadedModel | None = None) -> ModuleOp:
    """The model `args.model` names with its weights (`loaded`, if the caller has it already),
    imported to float `qnn` IR."""
    from xdsl.dialects.builtin import StringAttr

    from dopant.compiler.frontend import import_model
    from dopant.compiler.models.load import WEIGHTS_ATTR

    loaded = loaded or loaded_model(args)
    module = import_model(loaded.model, loaded.example_input)
    module.attributes[WEIGHTS_ATTR] = StringAttr(loaded.weights)
    return module
