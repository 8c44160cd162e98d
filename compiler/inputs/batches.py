"""Data from Python: a numpy array or torch tensor of samples, or any iterable of batches, as
checked float32 batches of the model's sample shape.

An iterable's items may be arrays, tensors or `(x, y, ...)` tuples (a torch DataLoader over a
(x, y) dataset yields those; extra items are ignored); an item shaped like one sample counts as
a batch of one, so iterating a torch Dataset itself works too. The batches are re-cut to
`size` samples, so the interpreter sees the same batch sizes whatever the loader's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp, TensorType

from dopant.dialects.qnn.base import forward
from dopant.support.errors import InputError
from dopant.support.progress import progress


@dataclass(frozen=True)
class Batch:
    """Samples `x` (float32, (B, *sample shape)) and, when asked for, labels `y` (int64, (B,))."""

    x: np.ndarray
    y: np.ndarray | None = None


def too_many_inputs(names: Sequence[str], what: str = "model", fix: str = "") -> InputError:
    """The error for a model with several inputs: dopant's data options feed exactly one."""
    fix = fix or (
        "run it from Python with dopant.runtime.reference.run(module, *inputs), or wrap the "
        "model so that it takes one tensor"
    )
    return InputError(
        f"the {what} takes {len(names)} inputs ({', '.join(names)}); dopant's data options "
        f"feed one input — {fix}."
    )


def model_sample_shape(module: ModuleOp, purpose: str) -> tuple[int, ...]:
    """The shape of one sample of the model's input: `@forward`'s argument without its batch
    dimension. `purpose` says what it is needed for ("to calibrate")."""
    args = forward(module, purpose).body.block.args
    if len(args) != 1:
        raise too_many_inputs([arg.name_hint or f"#{i}" for i, arg in enumerate(args)])
    arg_type = args[0].type
    assert isinstance(arg_type, TensorType), "func.func @forward takes tensors (qnn verifies it)"
    return tuple(arg_type.get_shape()[1:])


def replayable(data: Any) -> Any:
    """`data` itself if it can be iterated more than once (an array, a list, a DataLoader); a
    one-shot iterator (a generator) is collected into a list, for work that reads it twice."""
    return list(data) if isinstance(data, Iterator) else data


def batches(
    data: Any,
    sample_shape: Sequence[int],
    *,
    source: str = "calibration data",
    size: int = 256,
    labels: np.ndarray | None = None,
    need_labels: bool = False,
    show: bool = False,
    bar: str = "",
) -> Iterator[Batch]:
    """Checked batches of at most `size` samples from an array (with `labels` if given) or an
    iterable of batches; with `need_labels` every batch must carry labels, else any are
    dropped. `show` draws a progress bar named `bar`. InputError names `source`, the batch
    and what was expected."""
    sample = tuple(sample_shape)
    bar = bar or source
    if isinstance(data, str | bytes | os.PathLike):
        raise InputError(
            f"{source} is the path {os.fsdecode(data)!r}, not data; load it with "
            "dopant.compiler.inputs.load_samples(path, sample_shape) and pass its .x."
        )
    if _is_array(data):
        yield from _array_batches(data, labels, sample, source, size, need_labels, show, bar)
        return
    if labels is not None:
        raise InputError(
            f"labels go with an array of samples; {source} is an iterable of "
            "batches, so give (x, y) batches instead."
        )
    if not isinstance(data, Iterable):
        raise InputError(
            f"{source} is a {type(data).__name__}; give a numpy array or torch tensor of "
            "samples, or an iterable of batches (a DataLoader, a list of arrays)."
        )
    total = len(data) if isinstance(data, Sized) else None
    items = progress(data, show=show, total=total, what=bar, unit="batch")
    parts = (
        _item_batch(item, sample, f"batch {index} of {source}", need_labels)
        for index, item in enumerate(items)
    )
    found = False
    for batch in _rebatch(parts, size):
        found = True
        yield batch
    if not found:
        raise InputError(f"{source} holds no batches; give at least one sample.")


def _is_array(data: object) -> bool:
    return isinstance(data, np.ndarray) or (hasattr(data, "__array__") and hasattr(data, "shape"))


def _numpy(value: object) -> np.ndarray:
    """A numpy view of an array or a (CPU or GPU, grad or not) torch tensor."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _array_batches(
    data: object,
    labels: object,
    sample: tuple[int, ...],
    source: str,
    size: int,
    need_labels: bool,
    show: bool,
    bar: str,
) -> Iterator[Batch]:
    x = checked_samples(_numpy(data), sample, source)
    y = None
    if labels is not None:
        y = checked_labels(_numpy(labels), len(x), f"the labels of {source}")
    elif need_labels:
        raise InputError(
            f"{source} is an array of samples without labels; pass labels=y (class indices) "
            "or (x, y) batches."
        )
    starts = range(0, len(x), size)
    show = show and len(starts) > 1  # one batch is quick: no bar to flash
    for start in progress(starts, show=show, total=len(starts), what=bar, unit="batch"):
        part = None if y is None else y[start : start + size]
        yield Batch(x[start : start + size], part)


def _item_batch(item: object, sample: tuple[int, ...], where: str, need_labels: bool) -> Batch:
    """One item of an iterable as a checked batch: an array or tensor, or (x, y, ...)."""
    x, y = item, None
    if isinstance(item, tuple | list):
        if not item:
            raise InputError(f"{where} is an empty {type(item).__name__}; expected (x, y).")
        x, y = item[0], (item[1] if len(item) > 1 else None)
    if not _is_array(x):
        raise InputError(
            f"{where} is a {type(x).__name__}; expected an array or tensor of samples, or an "
            "(x, y) tuple of them."
        )
    array = _numpy(x)
    one = tuple(array.shape) == sample
    checked = checked_samples(array[None] if one else array, sample, where)
    if not need_labels:
        return Batch(checked)
    if y is None:
        raise InputError(f"{where} has no labels; evaluation needs (x, y) batches.")
    labels = _numpy(y)
    return Batch(checked, checked_labels(labels.reshape(1) if one else labels, len(checked), where))


def checked_samples(x: np.ndarray, sample: tuple[int, ...], where: str) -> np.ndarray:
    """`x` as contiguous float32 (N, *sample), N >= 1, finite; InputError naming `where`."""
    if x.dtype.kind not in "iuf":
        raise InputError(f"{where} has dtype {x.dtype}; expected real numbers (float or integer).")
    if x.ndim != len(sample) + 1 or tuple(x.shape[1:]) != sample:
        dims = ", ".join(map(str, sample))
        raise InputError(
            f"{where} has shape {list(x.shape)}, but the model takes samples of shape "
            f"{list(sample)}; give an array of shape [N, {dims}]."
        )
    if len(x) == 0:
        raise InputError(f"{where} holds no samples.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise InputError(f"{where} contains {bad} NaN or infinite value(s); give finite values.")
    return x


def checked_labels(y: np.ndarray, count: int, where: str) -> np.ndarray:
    """`y` as int64 class indices (count,); InputError naming `where`."""
    if y.dtype.kind not in "iu":
        raise InputError(
            f"{where}: labels have dtype {y.dtype}; expected integer class indices "
            "(y.astype(np.int64) if they are whole numbers)."
        )
    if y.shape != (count,):
        raise InputError(
            f"{where}: labels have shape {list(y.shape)}; expected [{count}], one class "
            "index per sample."
        )
    if count and y.min() < 0:
        raise InputError(f"{where}: label {int(y.min())} is negative; labels are 0, 1, ...")
    return y.astype(np.int64)


def _rebatch(parts: Iterable[Batch], size: int) -> Iterator[Batch]:
    """The samples of `parts`, in order, re-cut into batches of `size` (the last smaller)."""
    held: list[Batch] = []
    count = 0
    for part in parts:
        held.append(part)
        count += len(part.x)
        if count < size:
            continue
        merged = _concat(held)
        whole = count - count % size
        for start in range(0, whole, size):
            yield _slice(merged, start, start + size)
        held, count = ([_slice(merged, whole, count)] if whole < count else []), count - whole
    if held:
        yield _concat(held)


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    labels = [p.y for p in parts if p.y is not None]
    y = np.concatenate(labels) if len(labels) == len(parts) else None
    return Batch(np.concatenate([p.x for p in parts]), y)


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(batch.x[start:stop], None if batch.y is None else batch.y[start:stop])
