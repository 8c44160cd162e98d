"""The float teacher's features at the stage cuts: forward hooks on the torch model at the cuts'
module paths.

A module's output in torch is the tensor a cut hands on only when nothing after the module was
folded into the value that crosses the cut: a conv followed by its batch norm and ReLU is one op
in the IR, so the torch output of that conv is not a value of the quantized network. `disagreements`
finds such cuts once, on two images, against the float IR's own value at the cut (the reference
interpreter on the canonical float network, an independent computation of the same function).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.codesign._ptqkd.stages import Cut
from dopant.compiler.evaluate import BatchedRunner
from dopant.compiler.fakequant.build import Program
from dopant.dialects.qnn.values import float_name, value_names
from dopant.support.errors import InputError

FEATURE_BATCH = 256
# How far torch and the float IR may differ at a cut, relative to the feature's largest
# magnitude: both compute the same function in float32 (batch norm folded in the IR).
AGREEMENT = 1e-3


def _capture(
    model: nn.Module, paths: Sequence[str], images: np.ndarray
) -> tuple[dict[str, list[list[Tensor]]], np.ndarray]:
    """For each path, the outputs its module gave in each batch (a list per batch: a module
    that runs twice in one forward pass gives two), and the logits."""
    captured: dict[str, list[list[Tensor]]] = {path: [] for path in paths}

    def hook(path: str) -> Callable[[nn.Module, object, Any], None]:
        def keep(module: nn.Module, args: object, output: Any) -> None:
            captured[path][-1].append(output)

        return keep

    handles = [model.get_submodule(p).register_forward_hook(hook(p)) for p in paths]
    logits = []
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(images), FEATURE_BATCH):
                for path in paths:
                    captured[path].append([])
                chunk = np.ascontiguousarray(images[start : start + FEATURE_BATCH], np.float32)
                logits.append(model(torch.from_numpy(chunk)).numpy())
    finally:
        for handle in handles:
            handle.remove()
    return captured, np.concatenate(logits)


def _problem(calls: list[list[Tensor]]) -> str:
    """Why a module's captured outputs are not one tensor per batch ("" when they are)."""
    counts = {len(batch) for batch in calls}
    if counts != {1}:
        runs = max(counts)
        return f"the module runs {runs} times in one forward pass, so no one tensor is its output"
    if not all(isinstance(batch[0], Tensor) for batch in calls):
        return "the module returns something other than one tensor"
    return ""


def features(model: nn.Module, paths: Sequence[str], images: np.ndarray) -> list[np.ndarray]:
    """The float32 output of the module at each of `paths` on `images`, then the logits."""
    captured, logits = _capture(model, paths, images)
    out = []
    for path in paths:
        problem = _problem(captured[path])
        if problem:
            raise InputError(f"stage boundary '{path}': {problem}.")
        out.append(np.concatenate([batch[0].numpy() for batch in captured[path]]))
    return [*out, logits]


def disagreements(
    model: nn.Module, canonical: ModuleOp, program: Program, cuts: Sequence[Cut], images: np.ndarray
) -> dict[str, str]:
    """Why the torch output of each cut's module is not the value crossing the cut, by path
    (cuts that agree are left out); `canonical` is the float IR `program` was quantized from,
    `images` a few samples."""
    if not cuts:
        return {}
    names = value_names(program.ops)
    floats = BatchedRunner(canonical, len(images)).trace(np.ascontiguousarray(images, np.float32))
    captured, _ = _capture(model, [c.path for c in cuts], images)
    found = {}
    for cut in cuts:
        calls = captured[cut.path]
        key = float_name(names[cut.value.owner])  # type: ignore[index]
        problem = _problem(calls) or _differs(calls[0][0].numpy(), floats.get(key), key)
        if problem:
            found[cut.path] = problem
    return found


def _differs(torch_value: np.ndarray, ir_value: np.ndarray | None, key: str) -> str:
    if ir_value is None or ir_value.shape != torch_value.shape:
        return f"its output is not the tensor the IR hands on there ({key})"
    scale = float(np.abs(ir_value).max()) + 1e-12
    error = float(np.abs(ir_value - torch_value).max())
    if error > AGREEMENT * scale:
        return (
            f"its output in torch differs from the tensor the IR hands on there ({key}) by "
            f"{error / scale:.0%} of its range: what follows the module (a batch norm, an "
            "activation) is folded into that tensor"
        )
    return ""
