"""What `codesign.progressive` checks and sets up before any work: its options, its data (arrays
of the model's sample shape, integer labels) and one thread for training."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from dopant.codesign.scores import METHODS
from dopant.dialects.qnn.attrs import CALIBRATION_METHODS
from dopant.passes._quantize.numerics import WEIGHT_CLIPS
from dopant.support.errors import InputError

Data = tuple[np.ndarray, np.ndarray]


def check_options(
    epochs: int, lr: float, batch_size: int, weight_clip: str, method: str, prune_method: str
) -> None:
    """InputError for a negative epoch count, a non-positive rate or batch, or an unknown weight
    clip, calibration method or saliency."""
    if not isinstance(epochs, int) or epochs < 0:
        raise InputError(f"epochs_per_stage must be 0 or more, got {epochs!r}.")
    if not lr > 0:
        raise InputError(f"the learning rate must be positive, got {lr!r}.")
    if batch_size < 1:
        raise InputError(f"the batch size must be positive, got {batch_size}.")
    for name, value, known in (
        ("weight_clip", weight_clip, WEIGHT_CLIPS),
        ("calibration_method", method, CALIBRATION_METHODS),
        ("prune_method", prune_method, METHODS),
    ):
        if value not in known:
            raise InputError(f"{name} '{value}' is not known; use one of {', '.join(known)}.")


def image_array(data: Any, name: str, sample: tuple[int, ...]) -> np.ndarray:
    """`data` (an array or tensor of images of shape `sample`, argument `name`) as float32."""
    if isinstance(data, Tensor):
        data = data.detach().cpu().numpy()
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "iuf" or data.ndim < 1:
        raise InputError(f"{name} must be an array of images, got {type(data).__name__}.")
    if tuple(data.shape[1:]) != sample or len(data) == 0:
        shown = ", ".join(map(str, sample))
        raise InputError(
            f"{name} must hold images of shape [N, {shown}] (the model's input) with N >= 1, "
            f"got {list(data.shape)}."
        )
    return np.ascontiguousarray(data, np.float32)


def labelled(data: Any, name: str, sample: tuple[int, ...]) -> Data:
    """`data` = (images, integer labels), checked, as float32 images and int64 labels."""
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise InputError(f"{name} must be a pair (images, labels), got {type(data).__name__}.")
    x = image_array(data[0], name, sample)
    y = data[1].detach().cpu().numpy() if isinstance(data[1], Tensor) else data[1]
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise InputError(
            f"{name}'s labels must be {len(x)} integers (one per image), got "
            f"{getattr(y, 'shape', type(y).__name__)}."
        )
    return x, y.astype(np.int64)
