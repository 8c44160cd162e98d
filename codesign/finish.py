"""The co-design loop's last steps: dopant's recipe for training a compressed network on a few
hundred labelled images, accuracy of a torch model or of integer IR on labelled images, and the
final binary against the integer reference, bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.driver import CompiledModel
from dopant.compiler.evaluate import BatchedRunner, accuracy, top1
from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.fakequant import finetune as fakequant_finetune
from dopant.compiler.models.datasets import Dataset
from dopant.compiler.models.train import train
from dopant.support.errors import DopantError

EVAL_BATCH = 500
# The recipe (the main job's, codesign.demo, on the 512 shipped training images): the pruned
# float model fine-tuned at 0.02 (compiler.models.train) in batches of 64, then the integer
# network's fake-quant model (LSQ, Adam) at 1e-3.
FINETUNE_LR, FINETUNE_BATCH, QAT_LR = 0.02, 64, 1e-3


def finetune_float(model: nn.Module, data: Dataset, epochs: int) -> None:
    """Fine-tune a pruned float model in place by the recipe."""
    train(model, data, epochs=epochs, lr=FINETUNE_LR, batch_size=FINETUNE_BATCH)


def finetune_integer(network: FakeQuantNetwork, data: Dataset, epochs: int) -> None:
    """Train an integer network's fake-quant model in place by the recipe (QAT)."""
    fakequant_finetune(network, data.x, data.y, epochs=epochs, lr=QAT_LR, batch_size=FINETUNE_BATCH)


def torch_top1(model: nn.Module, data: tuple[np.ndarray, np.ndarray]) -> float:
    """Top-1 of `model` (in eval mode) on (images, labels)."""
    x, y = data
    model.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            chunk = torch.from_numpy(
                np.ascontiguousarray(x[start : start + EVAL_BATCH], np.float32)
            )
            logits.append(model(chunk).numpy())
    return top1(np.concatenate(logits), np.asarray(y))


def integer_top1(module: ModuleOp, data: tuple[np.ndarray, np.ndarray]) -> float:
    """Top-1 of quantized `module` on the integer reference interpreter."""
    x, y = data
    return accuracy(module, np.ascontiguousarray(x, np.float32), np.asarray(y))


def check_bit_exact(compiled: CompiledModel, quantized: ModuleOp, images: np.ndarray) -> None:
    """DopantError unless the binary's outputs on `images` equal the integer reference's."""
    simulated = compiled.run(images).outputs[0]
    expected = BatchedRunner(quantized).run(images)
    same = int(np.sum(np.all(simulated == expected, axis=tuple(range(1, expected.ndim)))))
    if same != len(images):
        raise DopantError(
            f"the final binary differs from the integer reference on {len(images) - same} of "
            f"{len(images)} images (a bug in dopant: please report it with this model)."
        )
