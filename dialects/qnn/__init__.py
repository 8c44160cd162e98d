"""The `qnn` dialect: float and quantized neural-network ops for the CNN family.

Every op keeps the torch module path it came from (`at "layer1.0.conv1"`), so reports, pruning
plans and latency tables can name layers as the user wrote them. The ops live in three files:
`layers` (ops with weights), `tensor_ops` (activations, add, pooling, shapes) and `quant`
(quantize, dequantize, requantize); `attrs` holds the attributes.
"""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin
from xdsl.dialects.func import Func
from xdsl.ir import Dialect

from dopant.dialects.qnn.attrs import ActivationAttr, CalibrationAttr, QuantParamsAttr
from dopant.dialects.qnn.base import QnnOp
from dopant.dialects.qnn.layers import BatchNormOp, ConstantOp, Conv2DOp, LinearOp
from dopant.dialects.qnn.quant import DequantizeOp, QuantizeOp, RequantizeOp
from dopant.dialects.qnn.tensor_ops import (
    AddOp,
    AvgPool2DOp,
    ClampOp,
    ConcatOp,
    GlobalAvgPoolOp,
    MaxPool2DOp,
    ReluOp,
    ReshapeOp,
)

__all__ = [
    "QNN",
    "ActivationAttr",
    "AddOp",
    "AvgPool2DOp",
    "BatchNormOp",
    "CalibrationAttr",
    "ClampOp",
    "ConcatOp",
    "ConstantOp",
    "Conv2DOp",
    "DequantizeOp",
    "GlobalAvgPoolOp",
    "LinearOp",
    "MaxPool2DOp",
    "QnnOp",
    "QuantParamsAttr",
    "QuantizeOp",
    "ReluOp",
    "RequantizeOp",
    "ReshapeOp",
    "make_context",
]

QNN = Dialect(
    "qnn",
    [
        ConstantOp,
        Conv2DOp,
        LinearOp,
        BatchNormOp,
        ReluOp,
        ClampOp,
        AddOp,
        MaxPool2DOp,
        AvgPool2DOp,
        GlobalAvgPoolOp,
        ReshapeOp,
        ConcatOp,
        QuantizeOp,
        DequantizeOp,
        RequantizeOp,
    ],
    [QuantParamsAttr, ActivationAttr, CalibrationAttr],
)


def make_context() -> Context:
    """A context that parses dopant IR at every stage: builtin, func, qnn and accel."""
    from dopant.dialects.accel import ACCEL  # accel builds on qnn's attributes

    ctx = Context()
    for dialect in (Builtin, Func, QNN, ACCEL):
        ctx.load_dialect(dialect)
    return ctx
