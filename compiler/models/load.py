"""Model references as the CLI takes them: `zoo:resnet8` or `path/to/file.py:factory`."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dopant.compiler.models import zoo
from dopant.support.errors import InputError


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to import, with the example input it is traced on."""

    name: str
    model: torch.nn.Module
    example_input: torch.Tensor


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


def _file_factory(path: str, factory_name: str) -> Callable[[], torch.nn.Module]:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"model file '{path}' does not exist; give path/to/file.py:factory.")
    spec = importlib.util.spec_from_file_location(f"dopant_user_model_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
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


def load_model(ref: str, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Build the model `ref` names and a random example input of its input shape."""
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
    generator = torch.Generator().manual_seed(0)
    return LoadedModel(ref, model.eval(), torch.randn(*shape, generator=generator))
