"""Fashion-MNIST for calibration, evaluation and training: an IDX reader, the full data set from
Debian's `dataset-fashion-mnist`, and a small stratified sample shipped with dopant.

The sample (`compiler/models/data/fashion_sample.npz`) lets calibration, tests and the demo run
with no data set installed: 512 calibration images drawn from the train split and 1000 test
images (100 per class) drawn from the test split. Nothing is downloaded, ever.

Images are float32 (N, 1, 28, 28) with pixels scaled to [0, 1]; labels are int64 class indices
0..9 in the order of the original data set (0 T-shirt/top ... 9 ankle boot).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from dopant.support.errors import InputError
from dopant.support.files import write_atomic

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package installs the IDX files."""

SPLITS = {"train": "train", "test": "t10k"}  # split -> IDX file prefix
NUM_CLASSES = 10
CLASS_NAMES = (  # Fashion-MNIST's labels 0..9 (Xiao et al., 2017)
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
SAMPLE_FILE = "fashion_sample.npz"
SAMPLE_CALIBRATION_SIZE = 512
SAMPLE_TEST_PER_CLASS = 100
SAMPLE_SEED = 0

# IDX magic numbers (LeCun's MNIST page): two zero bytes, type code 0x08 (unsigned byte), rank.
IDX_UBYTE = 0x08
IDX_RANKS = {1: "labels", 3: "images"}  # 0x00000801 and 0x00000803


@dataclass(frozen=True)
class Dataset:
    """Images `x` (float32, (N, 1, 28, 28), in [0, 1]) with their labels `y` (int64, (N,))."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise InputError(
                f"a Dataset needs images of shape (N, C, H, W) and labels of shape (N,), got "
                f"{self.x.shape} and {self.y.shape}; give as many labels as images."
            )

    def __len__(self) -> int:
        return len(self.y)

    def batches(
        self, size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) in batches of `size`, the last one possibly smaller; `shuffle`
        draws one permutation from `seed` so an epoch's order is reproducible."""
        if size < 1:
            raise InputError(f"batch size must be at least 1, got {size}.")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else None
        for start in range(0, len(self), size):
            if order is None:
                yield self.x[start : start + size], self.y[start : start + size]
            else:
                index = order[start : start + size]
                yield self.x[index], self.y[index]

    def subset(self, n: int) -> Dataset:
        """The first `n` samples (all of them if there are fewer)."""
        if n < 1:
            raise InputError(f"a subset needs at least 1 sample, got {n}.")
        return Dataset(self.x[:n], self.y[:n])


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (1f 8b)."""
    if not path.is_file():
        raise InputError(f"IDX file '{path}' does not exist.")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(
            f"IDX file '{path}' is a damaged gzip file ({error}); reinstall or re-create it."
        ) from None


def read_idx(path: str | Path) -> np.ndarray:
    """The uint8 array in an IDX file (images 0x00000803 or labels 0x00000801), gzipped or not.

    Byte offsets in errors count from the start of the (decompressed) IDX data.
    """
    file = Path(path)
    data = _read_bytes(file)
    if len(data) < 4:
        raise InputError(
            f"IDX file '{file}' ends at byte offset {len(data)}, inside the 4-byte magic number; "
            "the file is truncated."
        )
    if data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE or data[3] not in IDX_RANKS:
        raise InputError(
            f"IDX file '{file}' has magic number 0x{data[:4].hex()} at byte offset 0; expected "
            "0x00000803 (images) or 0x00000801 (labels). Is this an IDX file?"
        )
    rank = data[3]
    header_bytes = 4 + 4 * rank
    if len(data) < header_bytes:
        raise InputError(
            f"IDX file '{file}' ends at byte offset {len(data)}, inside its {rank} dimension "
            f"size(s) (bytes 4 to {header_bytes}); the file is truncated."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    if any(d == 0 for d in dims):
        zero = dims.index(0)
        raise InputError(
            f"IDX file '{file}' declares size 0 for dimension {zero} at byte offset "
            f"{4 + 4 * zero}; an IDX {IDX_RANKS[rank]} file needs every size >= 1."
        )
    payload_bytes = int(np.prod(dims))
    found_bytes = len(data) - header_bytes
    if found_bytes != payload_bytes:
        what = "truncated" if found_bytes < payload_bytes else "followed by extra bytes"
        raise InputError(
            f"IDX file '{file}' is {what}: its header declares {dims} = {payload_bytes} bytes "
            f"of data from byte offset {header_bytes}, so it should end at byte offset "
            f"{header_bytes + payload_bytes}, but it ends at byte offset {len(data)}."
        )
    return np.frombuffer(data, np.uint8, offset=header_bytes).reshape(dims).copy()


def _images(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]."""
    return (pixels.astype(np.float32) / 255.0)[:, None, :, :]


def _split_files(split: str, root: str | Path | None) -> tuple[Path, Path]:
    if split not in SPLITS:
        raise InputError(f"Fashion-MNIST has splits 'train' and 'test', not '{split}'.")
    folder = FASHION_MNIST_DIR if root is None else Path(root)
    prefix = SPLITS[split]
    files = []
    for kind in ("images-idx3", "labels-idx1"):
        candidates = [folder / f"{prefix}-{kind}-ubyte{ext}" for ext in (".gz", "")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(
                f"Fashion-MNIST {split} file '{candidates[0]}' is missing; install the data "
                "set with `apt-get install -y dataset-fashion-mnist` or pass root= the folder "
                "holding the IDX files."
            )
        files.append(found)
    return files[0], files[1]


def load_fashion_mnist(split: str, root: str | Path | None = None) -> Dataset:
    """The full Fashion-MNIST `split` ("train": 60000 images, "test": 10000) from `root`
    (default: Debian's install folder `FASHION_MNIST_DIR`)."""
    image_file, label_file = _split_files(split, root)
    pixels = read_idx(image_file)
    labels = read_idx(label_file)
    if pixels.ndim != 3 or labels.ndim != 1:
        raise InputError(
            f"'{image_file}' should hold images and '{label_file}' labels, but they have "
            f"shapes {pixels.shape} and {labels.shape}; check the file names."
        )
    if len(pixels) != len(labels):
        raise InputError(
            f"'{image_file}' holds {len(pixels)} images but '{label_file}' holds "
            f"{len(labels)} labels; the two files must come from the same split."
        )
    if labels.max() >= NUM_CLASSES:
        raise InputError(
            f"'{label_file}' holds label {int(labels.max())}; Fashion-MNIST labels are 0..9."
        )
    return Dataset(_images(pixels), labels.astype(np.int64))


def _stratified(labels: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """`total` indices spread evenly over the classes (the first `total % 10` classes get one
    more), drawn without replacement and returned in random order."""
    per_class, extra = divmod(total, NUM_CLASSES)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), per_class + (c < extra), replace=False)
        for c in range(NUM_CLASSES)
    ]
    return rng.permutation(np.concatenate(chosen))


def make_sample(out_path: str | Path, root: str | Path | None = None) -> None:
    """Write the shipped sample: 512 stratified train images for calibration and 100 test
    images per class, drawn with seed 0. It was created once, from the repository root, with

        python -c "from dopant.compiler.models.datasets import make_sample; \\
            make_sample('compiler/models/data/fashion_sample.npz')"

    The file keeps uint8 pixels and the source indices into each split (for provenance).
    """
    rng = np.random.default_rng(SAMPLE_SEED)
    calib_x, calib_y, calib_index = _draw("train", SAMPLE_CALIBRATION_SIZE, root, rng)
    test_x, test_y, test_index = _draw("test", SAMPLE_TEST_PER_CLASS * NUM_CLASSES, root, rng)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        calib_x=calib_x,
        calib_y=calib_y,
        calib_index=calib_index,
        test_x=test_x,
        test_y=test_y,
        test_index=test_index,
    )
    write_atomic(out_path, buffer.getvalue())


def _draw(
    split: str, total: int, root: str | Path | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 images, int64 labels, int64 source indices) of a stratified draw from `split`."""
    image_file, label_file = _split_files(split, root)
    pixels, labels = read_idx(image_file), read_idx(label_file)
    index = _stratified(labels, total, rng)
    return pixels[index], labels[index].astype(np.int64), index.astype(np.int64)


def data_file(name: str) -> bytes:
    """The bytes of a file shipped in `dopant.compiler`'s data folder (editable or installed)."""
    resource = resources.files("dopant.compiler.models") / "data" / name
    if not resource.is_file():
        raise InputError(
            f"dopant's data file '{name}' is missing from the installation; reinstall dopant."
        )
    return resource.read_bytes()


def load_sample() -> tuple[Dataset, Dataset]:
    """The shipped sample as (calibration: 512 train images, test: 1000 test images)."""
    with np.load(io.BytesIO(data_file(SAMPLE_FILE)), allow_pickle=False) as npz:
        return (
            Dataset(_images(npz["calib_x"]), npz["calib_y"]),
            Dataset(_images(npz["test_x"]), npz["test_y"]),
        )
