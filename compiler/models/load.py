"""Model references as the CLI takes them: `zoo:resnet8` or `path/to/file.py:factory`, with
their weights: a `--weights` file, else the zoo's shipped trained weights where they fit, else
the model's own initialization, said in a warning.

A model file runs with its own folder first on `sys.path`, so it can import the modules beside
it (as `python path/to/file.py` would); the path is restored afterwards.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from dopant.compiler.models import zoo
from dopant.compiler.models.pretrained import PRETRAINED, load_pretrained_into
from dopant.compiler.models.weights import load_weights
from dopant.support.errors import DopantWarning, InputError

WEIGHTS_ATTR = "qnn.weights"
"""Module attribute of imported IR: where the weights came from, so `eval` can warn about an
untrained model."""
UNTRAINED = "untrained"  # how that attribute starts for a model with its initial weights


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to import, with the example input it is traced on and where its weights
    came from (`weights`: 'file w.pt', 'zoo:resnet8 shipped Fashion-MNIST weights', or
    'untrained ...')."""

    name: str
    model: torch.nn.Module
    example_input: torch.Tensor
    weights: str


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,3,32,32' or '1x3x32x32' -> (1, 3, 32, 32)."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(
            f"input shape '{text}' is not a list of integers; write it like 1,3,32,32."
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"input shape '{text}' must have positive sizes, like 1,3,32,32.")
    return shape


def _zoo_model(name: str, shape: tuple[int, ...] | None) -> tuple[torch.nn.Module, tuple[int, ...]]:
    try:
        entry = zoo.get(name)
    except ValueError as error:
        raise InputError(f"{error}.") from None
    if shape is not None and len(shape) != 4:
        raise InputError(
            f"zoo:{name} takes NCHW input, but --input-shape has {len(shape)} sizes: "
            f"{list(shape)}; give four, like {','.join(map(str, entry.input_shape))}."
        )
    input_shape = shape or entry.input_shape
    return entry.build(input_shape), input_shape


@contextmanager
def _folder_on_path(folder: Path) -> Iterator[None]:
    """`folder` first on sys.path while the block runs, so a model file imports its siblings."""
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def _file_factory(path: str, factory_name: str) -> Callable[[], torch.nn.Module]:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"model file '{path}' does not exist; give path/to/file.py:factory.")
    spec = importlib.util.spec_from_file_location(f"dopant_user_model_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        with _folder_on_path(file.parent):
            spec.loader.exec_module(module)
    except Exception as error:
        raise InputError(f"model file '{path}' failed to load: {error}") from error
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        found = [
            n
            for n, v in vars(module).items()
            if callable(v)
            and not n.startswith("_")
            and getattr(v, "__module__", "") == module.__name__
        ]
        raise InputError(
            f"'{path}' has no callable '{factory_name}'; it defines: "
            f"{', '.join(found) or 'nothing callable'}."
        )
    return factory


def _zoo_weights(name: str, model: torch.nn.Module) -> str:
    """Load the zoo's shipped weights into `model` where they exist and fit; say where the
    weights came from, warning when the model stays untrained."""
    if name not in PRETRAINED:
        warnings.warn(
            f"zoo:{name} has no trained weights: it keeps its seeded random initialization, so "
            "its accuracy is chance; give --weights FILE (a state dict or `dopant train -o`).",
            DopantWarning,
            stacklevel=3,
        )
        return f"{UNTRAINED}: zoo:{name}, seeded initialization"
    try:
        load_pretrained_into(name, model)
    except InputError:
        warnings.warn(
            f"zoo:{name}'s shipped weights are for 1x28x28 Fashion-MNIST images and do not fit "
            "this input shape: the model keeps its random initialization; give --weights FILE.",
            DopantWarning,
            stacklevel=3,
        )
        return f"{UNTRAINED}: zoo:{name} at a shape its shipped weights do not fit"
    return f"zoo:{name} shipped Fashion-MNIST weights ({PRETRAINED[name]})"


def _check_one_input(ref: str, model: torch.nn.Module) -> None:
    """The CLI traces a model on one input tensor (`--input-shape`): refuse a forward that
    needs more, naming them, before torch fails with a message about shapes."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward without a signature: let tracing tell
        return
    needed = [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(needed) > 1:
        raise InputError(
            f"'{ref}' takes {len(needed)} inputs ({', '.join(needed)}), but dopant's CLI traces "
            "a model on one input (--input-shape); wrap it in a module whose forward takes one "
            "tensor, or import it from Python with import_model and a tuple of inputs."
        )


def load_model(
    ref: str, input_shape: tuple[int, ...] | None = None, weights: str | Path | None = None
) -> LoadedModel:
    """Build the model `ref` names with its weights (the file `weights`; else, for a zoo model,
    its shipped trained weights where they exist) and a random example input of its input
    shape. A DopantWarning says when the model is left untrained."""
    if weights is not None and not Path(weights).is_file():
        raise InputError(f"weights file '{weights}' does not exist.")
    if ref.startswith("zoo:"):
        model, shape = _zoo_model(ref[4:], input_shape)
    else:
        path, sep, factory_name = ref.rpartition(":")
        if not sep or not path:
            raise InputError(
                f"model '{ref}' is neither zoo:NAME nor path/to/file.py:factory; "
                f"zoo models: {', '.join(zoo.names())}."
            )
        if input_shape is None:
            raise InputError(f"model '{ref}' comes from a file, so give its --input-shape.")
        model, shape = _file_factory(path, factory_name)(), input_shape
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"'{ref}' returned a {type(model).__name__}, not a torch.nn.Module.")
    _check_one_input(ref, model)
    if weights is not None:
        load_weights(model, weights)
        source = f"file {weights}"
    elif ref.startswith("zoo:"):
        source = _zoo_weights(ref[4:], model)
    else:
        source = f"as {ref} builds them"
    generator = torch.Generator().manual_seed(0)
    return LoadedModel(ref, model.eval(), torch.randn(*shape, generator=generator), source)
