"""A short training recipe for zoo models on Fashion-MNIST; `dopant train` saves the weights as a
plain .npz (`models.weights`) that `--weights` reads.

The recipe (`train`) is SGD with Nesterov momentum 0.9 under a one-cycle learning-rate schedule
(Smith & Topin 2019, "Super-convergence"): the schedule that reaches good accuracy in the
fewest epochs, which is what a 2-core machine can afford. Augmentation is the CIFAR standard
(He et al. 2016, section 4.2): a random 28x28 crop of the image zero-padded by 2 pixels, and a
random horizontal flip, done in torch on whole batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dopant.compiler.models import zoo
from dopant.compiler.models.datasets import Dataset, load_fashion_mnist
from dopant.compiler.models.weights import save_weights
from dopant.support.errors import InputError

PAD_PIXELS = 2  # random-crop padding; 2 of 28 pixels, as 4 of 32 for CIFAR
MOMENTUM = 0.9
LABEL_SMOOTHING = 0.1  # Szegedy et al. 2016; softer targets help a short schedule a little


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did: mean training loss (label-smoothed cross entropy) and accuracy (on
    augmented batches, in train mode), test accuracy after the epoch (None without a test set)
    and wall time including that evaluation."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float | None
    seconds: float


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image randomly shifted by up to `PAD_PIXELS` (zero fill) and flipped left-right
    with probability 1/2: a random crop of the padded image, gathered for the whole batch."""
    n, _, height, width = x.shape
    padded = F.pad(x, (PAD_PIXELS,) * 4)
    dy = torch.randint(0, 2 * PAD_PIXELS + 1, (n, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD_PIXELS + 1, (n, 1, 1), generator=generator)
    flip = torch.rand(n, 1, 1, generator=generator) < 0.5
    cols = torch.arange(width).view(1, 1, width)
    cols = torch.where(flip, width - 1 - cols, cols)
    rows = dy + torch.arange(height).view(1, height, 1)
    batch = torch.arange(n).view(n, 1, 1)
    # Advanced indices around a slice put their broadcast shape first: (N, H, W, C). Copied to
    # canonical NCHW strides: `.contiguous()` keeps the permuted strides when C is 1 (a size-1
    # axis may have any stride), torch then runs the network channels-last, and torch 2.13's
    # CPU backward of a stride-2 1x1 conv with 2 or 4 channels (a pruned downsample) in that
    # layout corrupts the heap.
    nhwc = padded[batch, :, rows, dx + cols]
    return nhwc.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def train(
    model: nn.Module,
    train: Dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: bool = True,
    test: Dataset | None = None,
    log: Callable[[str], None] | None = None,
) -> list[EpochStats]:
    """Train `model` in place on `train` for `epochs` epochs; `lr` is the peak of the one-cycle
    schedule. Returns per-epoch statistics; the model is left in eval mode.

    The run is reproducible for a given `seed` and thread count: batch order, augmentation and
    dropout are seeded, and the caller's global RNG state is left as it was.
    """
    if epochs < 1:
        raise InputError(f"training needs at least 1 epoch, got {epochs}.")
    if len(train) == 0:
        raise InputError("the training set is empty; give at least one image.")
    steps_per_epoch = -(-len(train) // batch_size)
    # No weight decay on biases and BatchNorm parameters ("no bias decay", He et al. 2019,
    # "Bag of Tricks for Image Classification", section 3.1).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD(
        groups,
        lr=lr,
        momentum=MOMENTUM,
        nesterov=True,
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
    )
    generator = torch.Generator().manual_seed(seed)
    history: list[EpochStats] = []
    with torch.random.fork_rng():  # seeds dropout without touching the caller's RNG state
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            batches = train.batches(batch_size, shuffle=True, seed=seed * 1000 + epoch)
            loss, acc = _run_epoch(model, batches, optimizer, schedule, generator, augment)
            test_acc = accuracy(model, test) if test is not None else None
            stats = EpochStats(epoch, loss, acc, test_acc, time.perf_counter() - start)
            history.append(stats)
            if log is not None:
                log(format_epoch(stats))
    return history


def _run_epoch(
    model: nn.Module,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    augment: bool,
) -> tuple[float, float]:
    """One pass over `batches` in train mode, then eval mode; (mean loss, accuracy)."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for xb, yb in batches:
        x, y = torch.from_numpy(xb), torch.from_numpy(yb)
        if augment:
            x = augment_batch(x, generator)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    model.eval()
    return loss_sum / seen, correct / seen


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on `data`, evaluated in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in data.batches(batch_size):
            correct += int((model(torch.from_numpy(xb)).argmax(1).numpy() == yb).sum())
    model.train(was_training)
    return correct / len(data)


TABLE_HEADER = "| epoch |   loss | train acc | test acc |  seconds |\n|---|---|---|---|---|"


def format_epoch(stats: EpochStats) -> str:
    """One row of the per-epoch table under `TABLE_HEADER`."""
    test = "-" if stats.test_acc is None else f"{stats.test_acc:.2%}"
    return (
        f"| {stats.epoch:5d} | {stats.train_loss:6.4f} | {stats.train_acc:9.2%} | "
        f"{test:>8} | {stats.seconds:8.1f} |"
    )


def main_train(model_ref: str, epochs: int, out: str) -> None:
    """`dopant train zoo:NAME --epochs N -o out.npz`: train a zoo model on the full
    Fashion-MNIST train set, print a per-epoch table with full test-set accuracy, save the
    weights."""
    name = model_ref.removeprefix("zoo:")
    if name not in zoo.ZOO:
        raise InputError(
            f"'{model_ref}' is not a zoo model; `dopant train` takes zoo:NAME with NAME one of "
            f"{', '.join(zoo.names())}."
        )
    if epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {epochs}.")
    if not Path(out).resolve().parent.is_dir():
        raise InputError(f"cannot write '{out}': its folder does not exist.")
    train_set, test_set = load_fashion_mnist("train"), load_fashion_mnist("test")
    model = zoo.get(name).build((1, 1, 28, 28), num_classes=10)
    print(f"# {name} on Fashion-MNIST: {len(train_set)} train, {len(test_set)} test images")
    print(TABLE_HEADER)
    start = time.perf_counter()
    history = train(model, train_set, epochs=epochs, test=test_set, log=print)
    seconds = time.perf_counter() - start
    save_weights(model, out)
    print(
        f"\n{name}: test accuracy {history[-1].test_acc:.2%} on {len(test_set)} images after "
        f"{epochs} epoch(s), {seconds:.0f} s with {torch.get_num_threads()} thread(s); "
        f"weights in {out}"
    )
