"""Image files and folders (PNG, JPEG, BMP, read with Pillow) as uint8 (N, C, H, W) images.

A folder holds either images (unlabelled) or one subfolder per class, as torchvision's
ImageFolder: the label of an image is the index of its class folder among the class folders
sorted by name, so give every class of the model a folder (an empty one counts) for the indices
to match the model's. Hidden entries and files of other kinds are skipped; images are taken in
sorted order (class, then path).

Each image is converted to the model's channels (1: Pillow mode "L", 3: "RGB") and fitted to
its H x W: `resize` scales it to H x W (bilinear, the aspect ratio may change); `crop` scales
it until it covers H x W keeping the aspect ratio, then cuts out the center (torchvision's
Resize then CenterCrop). An image already H x W is taken as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dopant.support.errors import InputError
from dopant.support.progress import progress

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FITS = ("resize", "crop")
MODES = {1: "L", 3: "RGB"}  # the model's channels -> Pillow's mode


def read_folder(
    folder: Path, sample: tuple[int, ...], fit: str, limit: int = 0, show: bool = False
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """(uint8 images (N, C, H, W), labels or None, class names) of an image folder; `limit`
    reads only the first N images (0: all)."""
    entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    images = [e for e in entries if _is_image(e)]
    classes = [e for e in entries if e.is_dir()]
    if images and classes:
        raise InputError(
            f"image folder '{folder}' holds both images ({images[0].name}, ...) and "
            f"subfolders ({classes[0].name}, ...); put every image in a class subfolder, or "
            "keep only images for unlabelled data."
        )
    files = [(path, -1) for path in images]
    for index, class_folder in enumerate(classes):
        found = sorted(p for p in class_folder.rglob("*") if _is_image(p))
        files += [(path, index) for path in found]
    if not files:
        raise InputError(
            f"image folder '{folder}' holds no {', '.join(IMAGE_SUFFIXES)} images, neither "
            "directly nor in class subfolders."
        )
    files = files[:limit] if limit else files
    what = f"reading {folder.name}"
    read = [read_image(path, sample, fit) for path, _ in progress(files, show=show, what=what)]
    labels = np.array([label for _, label in files], np.int64) if classes else None
    return np.stack(read), labels, tuple(c.name for c in classes)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def read_image(path: Path, sample: tuple[int, ...], fit: str) -> np.ndarray:
    """One image file as uint8 (C, H, W) in the model's channels and size."""
    from PIL import Image, UnidentifiedImageError  # only when images are read

    if len(sample) != 3 or sample[0] not in MODES:
        raise InputError(
            f"'{path}' is an image, but the model takes samples of shape {list(sample)}; "
            "images feed models taking (C, H, W) with C = 1 (grayscale) or 3 (RGB). Give a "
            ".npy or .npz file instead."
        )
    channels, height, width = sample
    try:
        with Image.open(path) as opened:
            image = _fitted(opened.convert(MODES[channels]), height, width, fit)
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(
            f"image '{path}' cannot be read ({error}); remove it or save it again as PNG or JPEG."
        ) from None
    pixels = np.asarray(image, np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _fitted(image: Image.Image, height: int, width: int, fit: str) -> Image.Image:
    from PIL import Image

    if image.size == (width, height):
        return image
    if fit == "resize":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    covered = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (covered.width - width) // 2, (covered.height - height) // 2
    return covered.crop((left, top, left + width, top + height))
