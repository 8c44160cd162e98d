"""Batch norms folded into the torch model's own layers, exactly as `fold-batchnorm` folds them in
the IR, so that the model's conv and linear layers hold the weights the quantized network
quantizes and a trained fake-quant network's weights can be written back into them."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn
from xdsl.dialects.builtin import ModuleOp

from dopant.dialects.qnn import BatchNormOp
from dopant.passes.fold_batchnorm import fold, folds_into
from dopant.support.errors import InputError

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _module(model: nn.Module, path: str, kinds: tuple[type[nn.Module], ...]) -> nn.Module:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, kinds):
        names = " or ".join(kind.__name__ for kind in kinds)
        raise InputError(
            f'the IR\'s layer "{path}" is not a torch {names} of the model (found '
            f"{type(module).__name__}); progressive compression folds batch norms into the "
            "model's own conv and linear modules."
        )
    return module


def _numpy(tensor: Tensor | None, size: int, fill: float) -> np.ndarray:
    if tensor is None:
        return np.full(size, fill, np.float32)
    return tensor.detach().cpu().numpy()


def fold_batchnorms(model: nn.Module, module: ModuleOp) -> nn.Module:
    """A copy of `model` in eval mode in which every batch norm that `fold-batchnorm` folds in
    `module` (`model` imported by `frontend.import_model`) is folded into its conv or linear
    layer (`passes.fold_batchnorm.fold`, the same float64 arithmetic) and replaced by
    `nn.Identity`: the copy computes what `model` computes in eval mode, and its imported IR
    has the weights of `model`'s folded IR. `model` is not changed. InputError if a folded pair
    is not a torch conv/linear module and batch norm, or the norm keeps no running statistics.
    """
    pairs = []
    for op in module.walk():
        if isinstance(op, BatchNormOp) and (into := folds_into(op)) is not None:
            pairs.append((into.path.data, op.path.data))
    folded = copy.deepcopy(model).eval()
    for layer_path, norm_path in pairs:
        layer = _module(folded, layer_path, (nn.Conv2d, nn.Linear))
        norm = _module(folded, norm_path, _NORMS)
        assert isinstance(layer, nn.Conv2d | nn.Linear) and isinstance(norm, _NORMS)
        if norm.running_mean is None or norm.running_var is None:
            raise InputError(
                f'the batch norm "{norm_path}" keeps no running statistics, so it cannot be '
                "folded; build it with track_running_stats=True."
            )
        size = norm.num_features
        weight, bias = fold(
            layer.weight.detach().cpu().numpy(),
            None if layer.bias is None else layer.bias.detach().cpu().numpy(),
            _numpy(norm.weight, size, 1.0),
            _numpy(norm.bias, size, 0.0),
            _numpy(norm.running_mean, size, 0.0),
            _numpy(norm.running_var, size, 1.0),
            norm.eps,
        )
        layer.weight = nn.Parameter(torch.from_numpy(weight))
        layer.bias = nn.Parameter(torch.from_numpy(bias))
        parent, _, name = norm_path.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, name, nn.Identity())
    return folded
