"""`quantize`: turn calibrated float `qnn` IR into integer-only `qnn` IR."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.dialects.func import FuncOp
from xdsl.passes import ModulePass

from dopant.dialects.qnn import BatchNormOp, CalibrationAttr, QnnOp
from dopant.dialects.qnn.attrs import ROUNDING_MODES
from dopant.dialects.qnn.base import forward, is_float
from dopant.passes._quantize.lower import Lowering, replace_body
from dopant.passes._quantize.numerics import WEIGHT_CLIPS
from dopant.passes._quantize.plan import (
    activation_plan,
    arg_calibration,
    chosen_bits,
    layer_bits,
    value_bits,
)
from dopant.passes.set_bits import check_bits, set_layer_bits
from dopant.support.errors import DopantError, DopantWarning


class QuantizeNote(DopantWarning):
    """Something `quantize` did that the user should know but that is no error: a layer's
    weight scale widened so its bias fits int32. Issued through Python's `warnings`, so the
    `dopant` CLI prints it on standard error as one `dopant: warning:` line,
    `warnings.catch_warnings(record=True)` or `pytest.warns(QuantizeNote)` collect it, and
    `warnings.simplefilter("error", QuantizeNote)` makes it fatal."""


def _check_ready(fn: FuncOp) -> None:
    """Float IR with folded batch norms and a calibrated range on every op and the input."""
    if len(fn.body.block.args) != 1:
        raise DopantError("quantize supports a @forward with exactly one input.")
    ops = [op for op in fn.body.walk() if isinstance(op, QnnOp)]
    integer = [op.where for op in ops if not is_float(op.results[0])]
    if integer:
        raise DopantError(f"the IR is already integer ({integer[0]}); quantize runs on float IR.")
    norms = [f'"{op.path.data}"' for op in ops if isinstance(op, BatchNormOp)]
    if norms:
        raise DopantError(
            f"batch norms remain ({', '.join(norms)}); run fold-batchnorm before quantize."
        )
    missing = [
        f'"{op.path.data}"'
        for op in ops
        if not isinstance(op.attributes.get("calib"), CalibrationAttr)
    ]
    if arg_calibration(fn) is None:
        missing.insert(0, "the input")
    if missing:
        shown = ", ".join(missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        raise DopantError(
            f"{len(missing)} value(s) have no calibrated range: {shown}; run `dopant calibrate` "
            "(or calibrate() in Python) on sample data first."
        )


@dataclass(frozen=True)
class QuantizePass(ModulePass):
    """Quantize calibrated float IR to integer-only arithmetic (Jacob et al., CVPR 2018).

    Expects: float `qnn` IR with batch norms folded (`fold-batchnorm`), activations fused
    (`fuse-activation`, optional but saves requantizations) and a `#qnn.calib` range on every op
    and on the input (`calibrate`).
    Guarantees: weights symmetric per output channel (`per-channel`) at `weight-bits`, optionally
    MSE-clipped (`weight-clip=mse`); activations per tensor at `act-bits`, unsigned after a ReLU,
    zero point 0; int32 biases at S_x * S_w; conv/linear accumulate in si32 and a
    `qnn.requantize` (path "<layer>/requantize", `rounding`) rescales with the fused activation
    folded into its clamp; residual adds rescale both operands; pools, reshapes and concats run
    on integers. Between the input `qnn.quantize` and the output `qnn.dequantize` no float
    arithmetic remains.
    Mixed precision: each width of a conv/linear layer is the most specific choice made for it:
    its `bits = #qnn.bits<...>` attribute (from `set-bits` or another pass), else
    `first-last-bits` for the first and last layer (0 = off), else `weight-bits` / `act-bits`.
    `overrides` (`conv1=w8a8`, `fc=w8`, `layer1.0.conv1=a4`, by torch module path) writes those
    attributes first, as `set-bits` does, so it wins over attributes already on a layer for the
    widths it names. The integer layers carry no `bits` (their widths are in their types); the
    module records the options as `qnn.quantized`, with `overrides` listing every layer's
    attribute, so `quantize{<that text>}` redoes the same from float IR without attributes.
    Near-dead channels: a pretrained network can carry output channels whose weights are ~1e-9
    after batch-norm folding (a running variance of 0, a collapsed filter) beside a bias ~1; the
    bias would not fit int32 at S_x * max|w| / 127. Such a channel's weight scale is widened to
    the smallest that fits the bias in int32 less the room its products need (per tensor: the
    layer's one scale), as TFLite's quantizer does; its weights then round to few levels or to
    zeros (its output is its bias), and every other channel keeps its scale. Each such layer
    gives one `QuantizeNote` (a `UserWarning` through `warnings`) naming the layer's path and
    the channels, so it shows on the CLI's standard error and in Python's warning filters.
    Fails: on unsupported widths (2, 4 and 8 bits exist), an unknown rounding or weight clip,
    an override naming no layer, missing calibration ranges (naming the ops), remaining batch
    norms, or IR that is already integer.
    """

    name = "quantize"
    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    rounding: str = "gemmlowp"
    weight_clip: str = "minmax"
    first_last_bits: int = 0
    output_bits: int = 8
    overrides: tuple[str, ...] = ()

    def check_options(self) -> None:
        check_bits("weight-bits", self.weight_bits)
        check_bits("act-bits", self.act_bits)
        check_bits("output-bits", self.output_bits)
        if self.first_last_bits:
            check_bits("first-last-bits", self.first_last_bits)
        if self.rounding not in ROUNDING_MODES:
            raise DopantError(
                f"rounding '{self.rounding}' is not known; use one of {', '.join(ROUNDING_MODES)}."
            )
        if self.weight_clip not in WEIGHT_CLIPS:
            raise DopantError(
                f"weight-clip '{self.weight_clip}' is not known; use one of "
                f"{', '.join(WEIGHT_CLIPS)}."
            )

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        self.check_options()
        fn = forward(op, "to quantize")
        _check_ready(fn)
        set_layer_bits(fn, self.overrides)
        chosen = tuple(f"{layer.path.data}={bits.text}" for layer, bits in chosen_bits(fn).items())
        layers = layer_bits(fn, self.weight_bits, self.act_bits, self.first_last_bits)
        bits = value_bits(fn, layers, self.act_bits, self.output_bits)
        params = activation_plan(fn, bits, self.act_bits)
        lowering = Lowering(params, layers, self.per_channel, self.weight_clip, self.rounding)
        replace_body(fn, lowering.lower(fn))
        for note in lowering.notes:
            warnings.warn(note, QuantizeNote, stacklevel=2)
        fn.arg_attrs = None
        op.attributes["qnn.quantized"] = StringAttr(replace(self, overrides=chosen).description())

    def description(self) -> str:
        """The options as pipeline text, recorded on the module (`weight-bits=4 act-bits=8 ...`);
        `quantize{<this>}` parses back to the same options."""
        options = []
        for name, value in vars(self).items():
            if value == ():
                continue  # an empty list has no pipeline text
            if isinstance(value, tuple):
                text = ",".join(f'"{v}"' for v in value)
            else:
                text = str(value).lower() if isinstance(value, bool) else str(value)
            options.append(f"{name.replace('_', '-')}={text}")
        return " ".join(options)
