"""The co-design inputs as IR attributes, so a selection runs from text (`select-compression`).

On the module of float qnn IR:
    qnn.saliency    = {"layer1.0.conv1" = array<f64: ...>, ...}   per prunable group, per channel
    qnn.sensitivity = "<Sensitivity JSON>"                        per layer and bit width
    qnn.codesign    = {budget_cycles = 40000 : i64, scale = 0.93 : f64, step = 16 : i64,
                       widths = array<i64: 2, 4, 8>, bits_weight = 1.0 : f64}
`scale` is the measured cycles per cycle of the table's per-row sum (`choose.Correction`) of the
last network the loop measured: a selection made from text predicts with it.
and the machine as `qnn.target` (`backend.config_attr`): the latency table is the one of that
machine, read from (or measured into) the disk cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import (
    DenseArrayBase,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    f64,
    i64,
)

from dopant.codesign.sensitivity import Sensitivity
from dopant.support.errors import InputError

SALIENCY_ATTR = "qnn.saliency"
SENSITIVITY_ATTR = "qnn.sensitivity"
CODESIGN_ATTR = "qnn.codesign"


@dataclass(frozen=True)
class SelectionInputs:
    """What a selection reads besides the IR: scores, sensitivity and its settings."""

    scores: dict[str, np.ndarray] | None
    sensitivity: Sensitivity | None
    budget_cycles: int | None
    scale: float
    step: int | None
    widths: tuple[int, ...]
    bits_weight: float


def write_inputs(
    module: ModuleOp,
    *,
    scores: Mapping[str, np.ndarray] | None,
    sensitivity: Sensitivity | None,
    budget_cycles: int,
    scale: float,
    step: int,
    widths: Sequence[int],
    bits_weight: float,
) -> None:
    """Record the selection's inputs on `module` (module doc)."""
    if scores is not None:
        module.attributes[SALIENCY_ATTR] = DictionaryAttr(
            {gid: DenseArrayBase.from_list(f64, [float(v) for v in s]) for gid, s in scores.items()}
        )
    if sensitivity is not None:
        module.attributes[SENSITIVITY_ATTR] = StringAttr(sensitivity.to_json())
    module.attributes[CODESIGN_ATTR] = DictionaryAttr(
        {
            "budget_cycles": IntegerAttr(budget_cycles, i64),
            "scale": FloatAttr(scale, f64),
            "step": IntegerAttr(step, i64),
            "widths": DenseArrayBase.from_list(i64, list(widths)),
            "bits_weight": FloatAttr(bits_weight, f64),
        }
    )


def read_inputs(module: ModuleOp) -> SelectionInputs:
    """The inputs `write_inputs` recorded; InputError naming an attribute of the wrong kind."""
    scores = None
    if (attr := module.attributes.get(SALIENCY_ATTR)) is not None:
        if not isinstance(attr, DictionaryAttr):
            raise InputError(f"{SALIENCY_ATTR} must be a dictionary of array<f64: ...> scores.")
        scores = {}
        for gid, value in attr.data.items():
            if not isinstance(value, DenseArrayBase):
                raise InputError(f"{SALIENCY_ATTR} entry '{gid}' must be an array<f64: ...>.")
            scores[gid] = np.array([float(v) for v in value.iter_values()], dtype=np.float64)
    sensitivity = None
    if (attr := module.attributes.get(SENSITIVITY_ATTR)) is not None:
        if not isinstance(attr, StringAttr):
            raise InputError(f"{SENSITIVITY_ATTR} must be a string holding the sensitivity JSON.")
        sensitivity = Sensitivity.from_json(attr.data, SENSITIVITY_ATTR)
    settings = module.attributes.get(CODESIGN_ATTR)
    if settings is not None and not isinstance(settings, DictionaryAttr):
        raise InputError(f"{CODESIGN_ATTR} must be a dictionary attribute.")
    fields = settings.data if isinstance(settings, DictionaryAttr) else {}
    return SelectionInputs(
        scores,
        sensitivity,
        _int(fields, "budget_cycles"),
        _float(fields, "scale", 1.0),
        _int(fields, "step"),
        _ints(fields, "widths") or (2, 4, 8),
        _float(fields, "bits_weight", 1.0),
    )


def _int(fields: Mapping[str, object], name: str) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, IntegerAttr):
        raise InputError(f"{CODESIGN_ATTR}.{name} must be an integer, such as `{name} = 16 : i64`.")
    return int(value.value.data)


def _ints(fields: Mapping[str, object], name: str) -> tuple[int, ...]:
    value = fields.get(name)
    if value is None:
        return ()
    if not isinstance(value, DenseArrayBase):
        raise InputError(f"{CODESIGN_ATTR}.{name} must be an array<i64: ...>.")
    return tuple(int(v) for v in value.iter_values())


def _float(fields: Mapping[str, object], name: str, default: float) -> float:
    value = fields.get(name)
    if value is None:
        return default
    if not isinstance(value, FloatAttr):
        raise InputError(f"{CODESIGN_ATTR}.{name} must be a float, such as `{name} = 1.0 : f64`.")
    return float(value.value.data)
