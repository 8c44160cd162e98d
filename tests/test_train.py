"""Training, weights files and the shipped pretrained models, on the shipped sample only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dopant.compiler.models import zoo
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import PRETRAINED, load_pretrained
from dopant.compiler.models.train import (
    PAD_PIXELS,
    accuracy,
    augment_batch,
    main_train,
    train,
)
from dopant.compiler.models.weights import load_weights, save_weights
from dopant.support.errors import InputError


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread, as for benchmarks on the shared 2-core machine; restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _loss(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)))


def test_one_epoch_on_the_sample_lowers_the_loss_reproducibly() -> None:
    calibration, _ = load_sample()
    model = zoo.get("lenet5").build()
    before = _loss(model, calibration.x, calibration.y)
    history = train(model, calibration, epochs=1, batch_size=32, test=calibration)
    after = _loss(model, calibration.x, calibration.y)
    # An untrained 10-way classifier starts near ln 10 = 2.30; 16 steps take off about 0.27.
    assert before > 2.2 and after < before - 0.15, (before, after)
    assert not model.training
    (stats,) = history
    assert stats.epoch == 1 and stats.seconds > 0 and 0 < stats.train_acc <= 1
    assert stats.test_acc == accuracy(model, calibration)
    again = zoo.get("lenet5").build()
    train(again, calibration, epochs=1, batch_size=32)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same seed, same weights


def test_augment_batch_shifts_and_flips_each_image() -> None:
    x = torch.rand(64, 1, 6, 5)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = F.pad(x, (PAD_PIXELS,) * 4)
    flipped = 0
    for i in range(len(x)):
        candidates = [
            (flip, padded[i, :, dy : dy + 6, dx : dx + 5])
            for dy in range(2 * PAD_PIXELS + 1)
            for dx in range(2 * PAD_PIXELS + 1)
            for flip in (False, True)
        ]
        matches = [f for f, c in candidates if torch.equal(out[i], c.flip(-1) if f else c)]
        assert matches, f"image {i} is not a shifted or flipped crop"
        flipped += all(matches)
    assert 16 < flipped < 48  # about half of 64 flipped


def test_augmented_batches_have_canonical_strides() -> None:
    """One-channel images must come out with NCHW strides, not channels-last ones (a size-1
    axis may have any stride, and torch picks its layout from them)."""
    out = augment_batch(torch.rand(8, 1, 6, 5), torch.Generator().manual_seed(0))
    assert out.stride() == (30, 30, 5, 1)  # torch.empty(8, 1, 6, 5).stride()


def test_train_refuses_zero_epochs() -> None:
    calibration, _ = load_sample()
    with pytest.raises(InputError, match="at least 1 epoch, got 0"):
        train(zoo.get("lenet5").build(), calibration, epochs=0)


def test_save_and_load_weights_round_trip_bit_exactly(tmp_path: Path) -> None:
    model = zoo.get("resnet8").build()
    with torch.no_grad():  # weights and BatchNorm statistics unlike a fresh build's
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
            else:
                tensor.fill_(7)
    path = tmp_path / "w.npz"
    save_weights(model, path)
    loaded = load_weights(zoo.get("resnet8").build(), path)
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == original[name].dtype
        assert torch.equal(tensor, original[name]), name


def test_load_weights_names_what_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "lenet.npz"
    save_weights(zoo.get("lenet5").build(), path)
    with pytest.raises(
        InputError,
        match=r"'.*lenet\.npz' does not fit the model \(ResNet\): missing keys: conv1\.weight, .*unexpected keys: features\.0\.weight",
    ):
        load_weights(zoo.get("resnet8").build(), path)
    with pytest.raises(
        InputError,
        match=r"key 'classifier\.5\.weight' has shape \(10, 84\), but the model expects \(5, 84\)",
    ):
        load_weights(zoo.get("lenet5").build(num_classes=5), path)
    state = {k: v.numpy() for k, v in zoo.get("lenet5").build().state_dict().items()}
    state["features.0.bias"] = np.zeros(6, np.bool_)
    np.savez(path, **state)  # type: ignore[arg-type]
    with pytest.raises(
        InputError,
        match=r"key 'features\.0\.bias' has dtype bool, but the model holds torch\.float32",
    ):
        load_weights(zoo.get("lenet5").build(), path)


def test_load_weights_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    model = zoo.get("lenet5").build()
    with pytest.raises(InputError, match=r"'.*none\.npz' does not exist"):
        load_weights(model, tmp_path / "none.npz")
    text = tmp_path / "notes.npz"
    text.write_text("weights, honestly")
    with pytest.raises(InputError, match=r"'.*notes\.npz' is not a readable \.npz"):
        load_weights(model, text)


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_pretrained_models_classify_the_shipped_test_sample(name: str) -> None:
    _, test = load_sample()
    model = load_pretrained(name)
    assert not model.training
    assert accuracy(model, test) >= 0.85


def test_pretrained_and_train_refuse_unknown_models(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match="no pretrained weights for 'vgg_small'; available: lenet5, resnet8"
    ):
        load_pretrained("vgg_small")
    with pytest.raises(InputError, match="'zoo:nope' is not a zoo model"):
        main_train("zoo:nope", 1, str(tmp_path / "w.npz"))
    with pytest.raises(InputError, match="--epochs must be at least 1, got 0"):
        main_train("zoo:lenet5", 0, str(tmp_path / "w.npz"))
    with pytest.raises(InputError, match=r"cannot write '.*missing/w\.npz'"):
        main_train("zoo:lenet5", 1, str(tmp_path / "missing" / "w.npz"))
