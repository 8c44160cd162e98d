"""Data for calibration and evaluation: arrays, DataLoaders and iterables from Python; .npy,
.npz, image folders and the shipped sample from the shell; errors that name the data at fault."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from dopant.compiler.calibrate import calibrate
from dopant.compiler.evaluate import accuracy, score
from dopant.compiler.inputs import Preprocess, load_samples, model_sample_shape
from dopant.compiler.irio import ir_text, parse_ir
from dopant.support.errors import InputError

NET = """
func.func @forward(%x: tensor<1x1x2x3xf32>) -> tensor<1x6xf32> {
  %r = qnn.relu %x at "relu" : tensor<1x1x2x3xf32>
  %f = qnn.reshape %r at "flatten" : tensor<1x1x2x3xf32> -> tensor<1x6xf32>
  func.return %f : tensor<1x6xf32>
}
"""
SAMPLE = (1, 2, 3)


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, *SAMPLE)).astype(np.float32)
    return x, np.maximum(x, 0).reshape(50, 6).argmax(axis=1)  # labels the net gets right


def _calibrated(data: object, method: str = "mse") -> str:
    return ir_text(calibrate(parse_ir(NET), data, method, batch_size=16))


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_a_dataloader_calibrates_to_the_same_ranges_as_the_array(
    data: tuple[np.ndarray, np.ndarray], method: str
) -> None:
    x, y = data
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=7)
    want = _calibrated(x, method)
    assert "on 50 samples" in want
    assert _calibrated(loader, method) == want  # (x, y) batches of 7: labels ignored
    assert _calibrated((b for b in np.split(x, 5)), method) == want  # a one-shot generator
    if method == "minmax":
        assert _calibrated([torch.from_numpy(x[:20]), x[20:]], method) == want  # mixed
        assert _calibrated(list(torch.from_numpy(x)), method) == want  # single samples
        assert _calibrated(torch.from_numpy(x), method) == want  # one tensor


def test_accuracy_on_a_dataloader_equals_accuracy_on_arrays(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = data
    y = y.copy()
    y[:5] = (y[:5] + 1) % 6  # 5 of 50 wrong
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=8)
    module = parse_ir(NET)
    assert accuracy(module, x, y) == pytest.approx(0.9)
    assert accuracy(module, loader) == pytest.approx(0.9)
    assert score(module, loader, batch_size=16) == score(module, x, y)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            [np.zeros((4, *SAMPLE)), np.zeros((4, 3, 37, 41))],
            r"batch 1 of calibration data has shape \[4, 3, 37, 41\], but the model takes "
            r"samples of shape \[1, 2, 3\]; give an array of shape \[N, 1, 2, 3\]",
        ),
        ([np.zeros((2, *SAMPLE)), "x.npy"], r"batch 1 of calibration data is a str; expected"),
        ([()], r"batch 0 of calibration data is an empty tuple; expected \(x, y\)"),
        ([], r"calibration data holds no batches"),
        ("cal.npz", r"calibration data is the path 'cal.npz', not data; load it with"),
        (3, r"calibration data is a int; give a numpy array or torch tensor"),
        (np.zeros((2, 6)), r"has shape \[2, 6\], but the model takes samples of shape \[1, 2, 3\]"),
    ],
)
def test_bad_calibration_batches_are_named(bad: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        calibrate(parse_ir(NET), bad)


def test_evaluation_needs_labels_in_every_batch(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    module = parse_ir(NET)
    with pytest.raises(InputError, match=r"batch 1 of evaluation data has no labels"):
        accuracy(module, [(x[:4], y[:4]), x[4:]])
    with pytest.raises(InputError, match=r"an array of samples without labels; pass labels=y"):
        accuracy(module, x)
    with pytest.raises(InputError, match=r"labels have dtype float64; expected integer"):
        accuracy(module, x, y.astype(np.float64))
    with pytest.raises(InputError, match=r"holds label 9, but the model gives 6 logits"):
        accuracy(module, x, np.full(50, 9))


TWO = """
func.func @forward(%x: tensor<1x2x3x3xf32>, %y: tensor<1x2x3x3xf32>) -> tensor<1x2x3x3xf32> {
  %r = qnn.relu %x at "relu" : tensor<1x2x3x3xf32>
  %a = qnn.add %r, %y at "add" : (tensor<1x2x3x3xf32>, tensor<1x2x3x3xf32>) -> tensor<1x2x3x3xf32>
  func.return %a : tensor<1x2x3x3xf32>
}
"""


def test_a_model_with_two_inputs_is_refused_by_name() -> None:
    module = parse_ir(TWO)  # as `dopant import` writes relu(x) + y
    message = r"the model takes 2 inputs \(x, y\); dopant's data options feed one input — "
    with pytest.raises(InputError, match=message):
        model_sample_shape(module, "to calibrate")
    with pytest.raises(InputError, match=message):
        calibrate(module, np.zeros((2, 2, 3, 3), np.float32))


def test_uint8_is_scaled_and_float_taken_as_is(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    want = pixels.astype(np.float64) / 255.0  # an independent float64 reference
    sample = (3, 5, 6)
    np.save(tmp_path / "u8.npy", pixels)
    np.save(tmp_path / "nhwc.npy", pixels.transpose(0, 2, 3, 1))  # channels-last uint8
    np.savez(tmp_path / "f.npz", x=want.astype(np.float32), y=np.arange(4))
    for name in ("u8.npy", "nhwc.npy", "f.npz"):
        got = load_samples(str(tmp_path / name), sample)
        assert got.x.dtype == np.float32 and got.x.shape == (4, *sample)
        np.testing.assert_allclose(got.x, want, rtol=0, atol=1e-7)
    assert load_samples(str(tmp_path / "f.npz"), sample).y.tolist() == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert load_samples(str(tmp_path / "u8.npy"), sample).y is None
    normalized = load_samples(
        str(tmp_path / "u8.npy"), sample, preprocess=Preprocess((0.5, 0.4, 0.3), (0.2,))
    )
    mean = np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(normalized.x, (want - mean) / 0.2, rtol=0, atol=1e-5)
    gray = tmp_path / "gray.npy"
    np.save(gray, pixels[:, 0])  # (N, H, W) for a one-channel model
    np.testing.assert_allclose(load_samples(str(gray), (1, 5, 6)).x, want[:, :1], atol=1e-7)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((2, 1, 4, 4))}, r"'.*d\.npz' has no key 'x' \(it has: images\)"),
        (
            {"x": np.zeros((2, 3, 37, 41))},
            r"'.*d\.npz', key 'x' has shape \[2, 3, 37, 41\], but the model takes samples of "
            r"shape \[1, 4, 4\]",
        ),
        ({"x": np.zeros((0, 1, 4, 4))}, r"key 'x' holds no samples"),
        ({"x": np.array([[[["a"]]]])}, r"key 'x' has dtype <U1; expected real numbers"),
        ({"x": np.full((1, 1, 4, 4), np.nan)}, r"key 'x' contains 16 NaN or infinite"),
        (
            {"x": np.zeros((2, 1, 4, 4)), "y": np.zeros(3, int)},
            r"'.*d\.npz', key 'y': labels have shape \[3\]; expected \[2\]",
        ),
        ({"x": np.zeros((2, 4, 4, 1), np.float32)}, r"float32 images channels-last.*transpose"),
    ],
)
def test_bad_files_name_the_file_and_key(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message) as error:
        load_samples(str(path), (1, 4, 4))
    assert "256" not in str(error.value)


def test_bad_specs_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'.*nope' does not exist; give 'sample', 'fashion-"):
        load_samples(str(tmp_path / "nope"), (1, 4, 4))
    text = tmp_path / "text.npz"
    text.write_text("not numpy")
    with pytest.raises(InputError, match=r"'.*text\.npz' is not a readable \.npz file"):
        load_samples(str(text), (1, 4, 4))
    with pytest.raises(InputError, match=r"'sample' holds Fashion-MNIST images of shape"):
        load_samples("sample", (3, 32, 32))
    with pytest.raises(InputError, match=r"--mean has 2 values, but the model takes 1 channel"):
        load_samples("sample", (1, 28, 28), preprocess=Preprocess(mean=(0.1, 0.2)))
    cube = tmp_path / "cube.npy"
    np.save(cube, np.zeros((1, 3, 3, 3), np.uint8))
    with pytest.raises(InputError, match=r"read both channels-first and channels-last"):
        load_samples(str(cube), (3, 3, 3))


def test_the_sample_splits() -> None:
    calibration = load_samples("sample", (1, 28, 28))
    test = load_samples("sample", (1, 28, 28), split="test", limit=100)
    assert len(calibration) == 512 and len(test) == 100 and test.y is not None


def _png_folder(root: Path, pixels: np.ndarray, labels: np.ndarray) -> Iterator[Path]:
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        yield folder / f"{i:03d}.png"


def test_an_image_folder_gives_its_classes_in_sorted_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)  # RGB, H x W = 5 x 4
    labels = np.array([2, 0, 1, 0, 2, 1])
    list(_png_folder(tmp_path / "imgs", pixels, labels))
    (tmp_path / "imgs" / ".hidden").mkdir()
    (tmp_path / "imgs" / "class1" / "notes.txt").write_text("skipped")
    got = load_samples(str(tmp_path / "imgs"), (3, 5, 4))
    order = np.argsort(labels, kind="stable")  # class, then file name (= index)
    assert got.classes == ("class0", "class1", "class2")
    assert got.y is not None and got.y.tolist() == labels[order].tolist()
    want = pixels[order].transpose(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(got.x, want, rtol=0, atol=1e-7)
    gray = load_samples(str(tmp_path / "imgs"), (1, 5, 4), limit=2)  # Pillow's L conversion
    luma = pixels[order[:2]].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray.x[:, 0] * 255, luma, atol=1.01)


def test_folder_images_are_resized_or_center_cropped(tmp_path: Path) -> None:
    image = np.zeros((4, 8), np.uint8)
    image[:, :2] = image[:, 6:] = 255  # bright left and right quarters
    Image.fromarray(image).save(tmp_path / "wide.png")
    cropped = load_samples(str(tmp_path), (1, 4, 4), preprocess=Preprocess(fit="crop"))
    np.testing.assert_array_equal(cropped.x, np.zeros((1, 1, 4, 4)))  # the dark center
    resized = load_samples(str(tmp_path / "wide.png"), (1, 4, 4))  # one image file
    assert resized.x[0, 0, :, 0].min() > 0.5 and resized.x[0, 0, :, 0].tolist() == (
        resized.x[0, 0, :, 3].tolist()
    )


def test_bad_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"image folder '.*empty' holds no \.png"):
        load_samples(str(tmp_path / "empty"), (1, 4, 4))
    mixed = tmp_path / "mixed"
    (mixed / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mixed / "a.png")
    with pytest.raises(InputError, match=r"holds both images \(a\.png, \.\.\.\) and subfolders"):
        load_samples(str(mixed), (1, 4, 4))
    (mixed / "a.png").unlink()
    (mixed / "cats" / "bad.png").write_text("not a png")
    with pytest.raises(InputError, match=r"image '.*bad\.png' cannot be read"):
        load_samples(str(mixed), (1, 4, 4))
    with pytest.raises(InputError, match=r"C = 1 \(grayscale\) or 3 \(RGB\)"):
        load_samples(str(mixed), (2, 4, 4))


def test_fashion_mnist_is_the_full_test_set_or_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dopant.compiler.models import datasets

    if datasets.FASHION_MNIST_DIR.is_dir():
        test = load_samples("fashion-mnist", (1, 28, 28), split="test", limit=10)
        assert len(test) == 10 and test.y is not None
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(InputError, match=r"apt-get install -y dataset-fashion-mnist"):
        load_samples("fashion-mnist", (1, 28, 28), split="test")
