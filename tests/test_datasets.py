"""Data sets: the IDX reader on hand-made files, the shipped Fashion-MNIST sample, and the
checks on calibration files. Nothing here needs the full data set installed."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from dopant.compiler.models import datasets
from dopant.compiler.models.datasets import Dataset, load_fashion_mnist, read_idx
from dopant.support.errors import InputError


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file by hand: zero, zero, type 0x08, rank, big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
LABELS = np.array([3, 9], np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_reads_images_and_labels_plain_or_gzipped(tmp_path: Path, compress: bool) -> None:
    for name, array in (("images", IMAGES), ("labels", LABELS)):
        data = idx_bytes(array)
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if compress else data)
        got = read_idx(path)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, array)


def test_read_idx_names_the_magic_number_and_its_offset(tmp_path: Path) -> None:
    data = bytearray(idx_bytes(IMAGES))
    data[2] = 0x0D  # float32 type code: not an unsigned-byte file
    path = tmp_path / "bad.idx"
    path.write_bytes(bytes(data))
    with pytest.raises(
        InputError, match=r"'.*bad\.idx' has magic number 0x00000d03 at byte offset 0"
    ):
        read_idx(path)


def test_read_idx_refuses_a_truncated_payload_with_offsets(tmp_path: Path) -> None:
    # Header is 4 + 3*4 = 16 bytes; 24 bytes of pixels should end at offset 40.
    path = tmp_path / "short.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(IMAGES)[:-5]))
    with pytest.raises(
        InputError,
        match=r"short\.idx\.gz' is truncated.*byte offset 16.*end at byte offset 40.*ends at byte offset 35",
    ):
        read_idx(path)


def test_read_idx_refuses_extra_bytes_and_a_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(LABELS) + b"\x00")
    with pytest.raises(InputError, match=r"followed by extra bytes.*ends at byte offset 11"):
        read_idx(path)
    path.write_bytes(idx_bytes(IMAGES)[:10])
    with pytest.raises(InputError, match="ends at byte offset 10, inside its 3 dimension"):
        read_idx(path)


def test_read_idx_refuses_a_damaged_gzip_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(idx_bytes(IMAGES))[:20])
    with pytest.raises(InputError, match=r"broken\.gz' is a damaged gzip file"):
        read_idx(path)


def test_load_fashion_mnist_reads_a_split_from_root(tmp_path: Path) -> None:
    images = np.full((2, 28, 28), 255, np.uint8)
    images[1] = 51
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(LABELS))
    data = load_fashion_mnist("test", root=tmp_path)
    assert data.x.shape == (2, 1, 28, 28) and data.x.dtype == np.float32
    assert data.x[0].min() == 1.0 and data.x[1].max() == pytest.approx(0.2)
    assert data.y.dtype == np.int64 and data.y.tolist() == [3, 9]


def test_load_fashion_mnist_tells_how_to_get_missing_files(tmp_path: Path) -> None:
    with pytest.raises(
        InputError,
        match=r"train-images-idx3-ubyte\.gz' is missing.*apt-get install -y dataset-fashion-mnist",
    ):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(InputError, match="splits 'train' and 'test', not 'valid'"):
        load_fashion_mnist("valid", root=tmp_path)


def test_load_fashion_mnist_refuses_mismatched_counts(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 28, 28))))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(LABELS))
    with pytest.raises(InputError, match=r"holds 3 images but .* holds 2 labels"):
        load_fashion_mnist("test", root=tmp_path)


def test_the_shipped_sample_is_stratified_and_scaled() -> None:
    calibration, test = datasets.load_sample()
    assert calibration.x.shape == (512, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    for data in (calibration, test):
        assert data.x.dtype == np.float32 and data.y.dtype == np.int64
        assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert np.bincount(test.y, minlength=10).tolist() == [100] * 10
    assert np.bincount(calibration.y, minlength=10).tolist() == [52, 52] + [51] * 8
    # Shuffled, not sorted by class: the first 20 test images span most classes.
    assert len(set(test.y[:20].tolist())) >= 6
    # Each source image at most once, from the right split (60k train, 10k test).
    with np.load(io.BytesIO(datasets.data_file(datasets.SAMPLE_FILE))) as npz:
        for key, size, count in (("calib_index", 60000, 512), ("test_index", 10000, 1000)):
            index = npz[key]
            assert len(set(index.tolist())) == count and index.min() >= 0 and index.max() < size


def test_make_sample_draws_stratified_images_with_their_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for prefix, count in (("train", 700), ("t10k", 1200)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        pixels = rng.integers(0, 256, (count, 2, 2), dtype=np.uint8)
        pixels[:, 0, 0] = labels  # so every image shows its label
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(pixels))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    out = tmp_path / "sample.npz"
    datasets.make_sample(out, root=tmp_path)
    with np.load(out) as npz:
        for name, per_class in (("calib", [52, 52] + [51] * 8), ("test", [100] * 10)):
            x, y, index = npz[f"{name}_x"], npz[f"{name}_y"], npz[f"{name}_index"]
            assert x.dtype == np.uint8 and y.dtype == np.int64
            assert np.bincount(y, minlength=10).tolist() == per_class
            np.testing.assert_array_equal(x[:, 0, 0], y)
            np.testing.assert_array_equal(index % 10, y)


def test_dataset_batches_cover_everything_once() -> None:
    data = Dataset(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10))
    plain = list(data.batches(4))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    assert np.concatenate([y for _, y in plain]).tolist() == list(range(10))
    shuffled = np.concatenate([y for _, y in data.batches(4, shuffle=True, seed=1)])
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))
    again = np.concatenate([y for _, y in data.batches(4, shuffle=True, seed=1)])
    assert again.tolist() == shuffled.tolist()
    for x, y in data.batches(3, shuffle=True):
        assert x[:, 0, 0, 0].tolist() == y.tolist()  # images stay with their labels
    assert len(data.subset(3)) == 3 and len(data.subset(99)) == 10
