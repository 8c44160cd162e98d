"""The `qnn` dialect: float and quantized neural-network ops for the CNN family.

Every op keeps the torch module path it came from (`at "layer1.0.conv1"`), so reports, pruning
plans and latency tables can name layers as the user wrote them. The ops live in three files:
`layers` (ops with weights), `tensor_ops` (activations, add, pooling, shapes) and `quant`
(quantize, dequantize, requantize); `attrs` holds the attributes.
"""

from __future__ import annotations

from xdsl.ir import Dialect

from dopant.dialects.qnn.attrs import ActivationAttr, BitsAttr, CalibrationAttr, QuantParamsAttr
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
    "BitsAttr",
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
    [QuantParamsAttr, ActivationAttr, CalibrationAttr, BitsAttr],
)
