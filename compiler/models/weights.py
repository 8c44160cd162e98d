"""Weights files: dopant's own `.npz` and a torch `state_dict` (`.pt`, `.pth`, `.bin`, ...).

dopant saves a model's state dict as a plain `.npz` (no pickle, so reading it runs no code);
`dopant train -o` writes one and `--weights` reads it. A torch file is read with
`torch.load(..., weights_only=True)`, which unpickles tensors and containers only, never code.
Checkpoints that wrap the state dict (`{"state_dict": ...}`, `{"model": ...}`, as Lightning and
most training scripts save them) are unwrapped, and the `module.` prefix `nn.DataParallel` adds
is dropped. Every key, shape and kind of number is checked against the model before anything is
loaded, and an error names the file, the key and what to do.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TypeGuard

import numpy as np
import torch
from torch import nn

from dopant.support.errors import InputError
from dopant.support.files import write_atomic

WRAPPERS = ("state_dict", "model", "model_state_dict", "net")  # checkpoint keys holding weights
DATA_PARALLEL_PREFIX = "module."


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write `model`'s state dict (parameters and buffers, as stored) to a .npz, atomically."""
    arrays = {name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights file at `path` (a dopant .npz or a torch state dict) into `model`, in
    place (also returned); refuses files whose names, shapes or kinds of number do not match
    the model's state dict."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"weights file '{file}' does not exist.")
    data, source = file.read_bytes(), f"weights file '{file}'"
    npz = zipfile.is_zipfile(io.BytesIO(data)) and not _is_torch_zip(data)
    if npz or file.suffix == ".npz":
        return load_weights_bytes(model, data, source)
    return load_state(model, _torch_state(data, source), source)


def load_weights_bytes(model: nn.Module, data: bytes, source: str) -> nn.Module:
    """`load_weights` on the bytes of a dopant .npz; `source` names them in errors."""
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(
            f"{source} is not a readable .npz ({error}); write it with "
            "dopant.compiler.models.weights.save_weights or `dopant train -o`."
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise InputError(f"{source} holds a bare array, not a .npz of named arrays.")
    with npz:
        try:
            arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:  # object arrays, bad entries
            raise InputError(
                f"{source} has an unreadable array ({error}); save plain numeric arrays."
            ) from None
    return load_state(model, arrays, source)


def _is_torch_zip(data: bytes) -> bool:
    """torch.save writes a zip too; its entries sit under one folder with a `data.pkl`."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())


def _torch_state(data: bytes, source: str) -> dict[str, np.ndarray]:
    """The state dict in a torch file, unwrapped from a checkpoint, as numpy arrays."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"{source} is neither a dopant .npz nor a torch file of tensors ({first}); save the "
            "weights with torch.save(model.state_dict(), path)."
        ) from None
    state = _unwrap(loaded, source)
    prefixed = all(k.startswith(DATA_PARALLEL_PREFIX) for k in state)
    return {
        (k.removeprefix(DATA_PARALLEL_PREFIX) if prefixed else k): v.detach().cpu().numpy()
        for k, v in state.items()
    }


def _is_state(value: object) -> TypeGuard[Mapping[str, torch.Tensor]]:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _unwrap(loaded: object, source: str) -> Mapping[str, torch.Tensor]:
    """A mapping of names to tensors: the file's object, or the one under a WRAPPERS key."""
    if _is_state(loaded):
        return loaded
    if isinstance(loaded, Mapping):
        for key in WRAPPERS:
            inner = loaded.get(key)
            if _is_state(inner):
                return inner
    raise InputError(
        f"{source} holds a {type(loaded).__name__}, not a state dict (a mapping of names to "
        f"tensors, or one under a key {', '.join(WRAPPERS)}); save it with "
        "torch.save(model.state_dict(), path)."
    )


def load_state(model: nn.Module, arrays: Mapping[str, np.ndarray], source: str) -> nn.Module:
    """Load `arrays` (name -> array) into `model` after checking every key, shape and kind of
    number against its state dict; `source` names the arrays in errors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in arrays]
    unexpected = [k for k in arrays if k not in expected]
    if missing or unexpected:
        raise InputError(
            f"{source} does not fit the model ({type(model).__name__}): "
            f"missing keys: {', '.join(missing) or 'none'}; unexpected keys: "
            f"{', '.join(unexpected) or 'none'}. Load weights saved from the same architecture."
        )
    tensors = {}
    for name, target in expected.items():
        array = arrays[name]
        if tuple(array.shape) != tuple(target.shape):
            raise InputError(
                f"{source}, key '{name}' has shape {array.shape}, but the model "
                f"expects {tuple(target.shape)}; load weights saved from the same architecture."
            )
        wanted_kind = "f" if target.is_floating_point() else "iu"
        if array.dtype.kind not in wanted_kind:
            raise InputError(
                f"{source}, key '{name}' has dtype {array.dtype}, but the model "
                f"holds {target.dtype} there."
            )
        tensors[name] = torch.from_numpy(np.ascontiguousarray(array)).to(target.dtype)
    model.load_state_dict(tensors)
    return model
