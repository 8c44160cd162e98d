"""Data from the shell: a SPEC naming samples, loaded as the model's float32 input.

SPEC is one of
- `sample`: the shipped Fashion-MNIST sample (its 512 train images for calibration, its 1000
  test images for evaluation and runs);
- `fashion-mnist`: the full 10k test set (Debian's `dataset-fashion-mnist`);
- a `.npy` file: images only;
- a `.npz` file: images under key `x`, optional int class labels under key `y`;
- an image file (PNG, JPEG, BMP) or an image folder (`folder.py`).

Images are (N, C, H, W) as the model takes them; uint8 ones may also be channels-last
(N, H, W, C), and single-channel ones (N, H, W). The stated normalization (`Preprocess`):
uint8 pixels are divided by 255 (to [0, 1]), any other dtype is taken as it is; then, if given,
x = (x - mean[c]) / std[c] per channel, as torchvision's Normalize after ToTensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dopant.compiler.inputs.batches import checked_labels, checked_samples
from dopant.compiler.inputs.folder import FITS, IMAGE_SUFFIXES, read_folder, read_image
from dopant.support.errors import InputError

SPLITS = ("calibration", "test")  # which part of `sample` a command reads


@dataclass(frozen=True)
class Preprocess:
    """How shell data becomes model input, after uint8 / 255: (x - mean[c]) / std[c] per
    channel (one value for all channels, or one per channel; empty: 0 and 1), and how an
    image of another size is fitted to the model's H x W (`fit`: "resize" or "crop")."""

    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    fit: str = "resize"


@dataclass(frozen=True)
class Samples:
    """Model inputs `x` (float32, (N, *sample shape)), labels `y` (int64, (N,)) when the data
    has them, `source` naming the data in messages, and the class names when the data knows
    them (a folder's class folders, Fashion-MNIST's classes)."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.x)


def load_samples(
    spec: str,
    sample_shape: Sequence[int],
    *,
    split: str = "calibration",
    preprocess: Preprocess = Preprocess(),
    limit: int = 0,
    show: bool = False,
) -> Samples:
    """The samples `spec` names (see the module docstring), checked against the model's
    `sample_shape` and preprocessed; `split` picks the part of `sample`; `limit` keeps the
    first N samples (0: all); `show` draws a bar while an image folder loads."""
    sample = tuple(sample_shape)
    if split not in SPLITS:
        raise InputError(f"split '{split}' is not known; use one of {', '.join(SPLITS)}.")
    if limit < 0:
        raise InputError(f"the limit must be 0 (all samples) or more, got {limit}.")
    if preprocess.fit not in FITS:
        raise InputError(f"fit '{preprocess.fit}' is not known; use one of {', '.join(FITS)}.")
    raw, labels, source, classes = _read(spec, sample, split, preprocess.fit, limit, show)
    if limit:
        raw = raw[:limit]
        labels = None if labels is None else labels[:limit]
    x = _normalized(_channels_first(raw, sample, source), sample, preprocess, source)
    return Samples(x, labels, source, classes)


def _read(
    spec: str, sample: tuple[int, ...], split: str, fit: str, limit: int, show: bool
) -> tuple[np.ndarray, np.ndarray | None, str, tuple[str, ...]]:
    """(images as stored, labels or None, how to name the data, class names) of `spec`."""
    from dopant.compiler.models import datasets

    if spec in ("sample", "fashion-mnist") and sample != (1, 28, 28):
        raise InputError(
            f"'{spec}' holds Fashion-MNIST images of shape [1, 28, 28], but the model takes "
            f"samples of shape {list(sample)}; give data of your own: a .npy or .npz file or "
            "an image folder."
        )
    if spec == "sample":
        calibration, test = datasets.load_sample()
        data = calibration if split == "calibration" else test
        what = "512 train images" if split == "calibration" else "1000 test images"
        return data.x, data.y, f"the shipped Fashion-MNIST sample ({what})", datasets.CLASS_NAMES
    if spec == "fashion-mnist":
        data = datasets.load_fashion_mnist("test")
        return data.x, data.y, "the Fashion-MNIST test set", datasets.CLASS_NAMES
    path = Path(spec)
    if path.is_dir():
        images, labels, classes = read_folder(path, sample, fit, limit, show)
        return images, labels, f"image folder '{path}'", classes
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        return read_image(path, sample, fit)[None], None, f"image '{path}'", ()
    if path.suffix.lower() not in (".npy", ".npz"):
        exists = "is not a .npy, .npz, image or folder" if path.exists() else "does not exist"
        raise InputError(
            f"'{spec}' {exists}; give 'sample', 'fashion-mnist', a .npy file of images, a "
            ".npz file with images 'x' (and labels 'y'), an image file or an image folder."
        )
    return (*_read_numpy(path), ())


def _read_numpy(path: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Images (and labels) of a .npy (images only) or .npz (keys 'x' and 'y') file."""
    if not path.is_file():
        raise InputError(
            f"'{path}' does not exist; give the path of a {path.suffix} file of images."
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(
            f"'{path}' is not a readable {path.suffix} file ({error}); save images with "
            "numpy.save(path, x) or numpy.savez(path, x=images, y=labels)."
        ) from None
    if isinstance(loaded, np.ndarray):
        return loaded, None, f"'{path}'"
    with loaded:
        if "x" not in loaded.files:
            raise InputError(
                f"'{path}' has no key 'x' (it has: {', '.join(loaded.files) or 'nothing'}); "
                "store the images as x=... (and the labels as y=...)."
            )
        x = _array(loaded, "x", path)
        y = _array(loaded, "y", path) if "y" in loaded.files else None
    if y is not None and x.ndim:  # a 0-d x is refused with its shape later
        y = checked_labels(y, len(x), f"'{path}', key 'y'")
    return x, y, f"'{path}', key 'x'"


def _array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as error:  # object arrays refuse to load without pickle
        raise InputError(f"'{path}', key '{key}': {error}; store a numeric array.") from None


def _channels_first(x: np.ndarray, sample: tuple[int, ...], source: str) -> np.ndarray:
    """`x` as (N, *sample): as it is, or grayscale (N, H, W) given a channel axis, or uint8
    channels-last (N, H, W, C) transposed, when the shape says so unambiguously."""
    if x.ndim == len(sample) + 1 and tuple(x.shape[1:]) == sample:
        if len(sample) == 3 and x.dtype == np.uint8 and _both_layouts(sample):
            raise InputError(
                f"{source} holds uint8 images of shape {list(x.shape[1:])}, which read both "
                "channels-first and channels-last; save them channels-first as float32 "
                "(x / 255) so that the layout is not guessed."
            )
        return x
    if len(sample) != 3:
        return x  # not images: checked_samples names the shapes
    c, h, w = sample
    if c == 1 and x.ndim == 3 and tuple(x.shape[1:]) == (h, w):
        return x[:, None]
    if x.ndim == 4 and tuple(x.shape[1:]) == (h, w, c):
        if x.dtype == np.uint8:
            return x.transpose(0, 3, 1, 2)
        raise InputError(
            f"{source} holds {x.dtype} images channels-last, shape {list(x.shape)}; the model "
            f"takes channels first, samples of shape {list(sample)}: save "
            "np.transpose(x, (0, 3, 1, 2)) (only uint8 images are taken channels-last)."
        )
    return x


def _both_layouts(sample: tuple[int, ...]) -> bool:
    c, h, w = sample
    return c > 1 and c == h == w


def _normalized(
    raw: np.ndarray, sample: tuple[int, ...], preprocess: Preprocess, source: str
) -> np.ndarray:
    """uint8 / 255, then (x - mean) / std per channel (axis 1), checked as model input."""
    if raw.dtype == np.uint8:
        raw = raw.astype(np.float32) / np.float32(255)  # as datasets and ToTensor scale
    x = checked_samples(raw, sample, source)
    if not preprocess.mean and not preprocess.std:
        return x
    channels = sample[0] if sample else 1
    mean = _per_channel(preprocess.mean or (0.0,), channels, "--mean")
    std = _per_channel(preprocess.std or (1.0,), channels, "--std")
    if np.any(std <= 0):
        raise InputError(f"--std must be positive, got {', '.join(map(str, preprocess.std))}.")
    shape = (1, channels) + (1,) * (len(sample) - 1)
    return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def _per_channel(values: tuple[float, ...], channels: int, option: str) -> np.ndarray:
    if len(values) not in (1, channels):
        raise InputError(
            f"{option} has {len(values)} values, but the model takes {channels} channel(s); "
            f"give one value, or {channels} separated by commas."
        )
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"{option} must be finite numbers, got {values}.")
    return np.asarray(values * (channels if len(values) == 1 else 1), np.float32)
