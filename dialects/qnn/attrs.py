"""Attributes of the `qnn` dialect: quantization parameters and fused activations.

    #qnn.qparams<si8, scale = [0.05], zp = [0]>                  per tensor
    #qnn.qparams<si4, axis = 0, scale = [0.1, 0.2], zp = [0, 0]> per channel along axis 0
    #qnn.act<relu>   #qnn.act<clamp 0.0, 6.0>                    activation fused into a producer
    #qnn.bits<w4a8>  #qnn.bits<w4>  #qnn.bits<a4>                widths chosen for one layer

A real value r and its integer q are related by r = scale * (q - zp) (Jacob et al., CVPR 2018).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from xdsl.dialects.builtin import ArrayAttr, FloatData, IntAttr, IntegerType, Signedness, StringAttr
from xdsl.ir import Attribute, ParametrizedAttribute
from xdsl.irdl import irdl_attr_definition, param_def
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from dopant.dialects.qnn.base import QnnOp

# Storage widths a quantized tensor may have: 2..8 bits for weights and activations (BitFusion
# bricks), 32 bits for biases and accumulators.
QUANT_BITS = (2, 3, 4, 5, 6, 7, 8, 32)
PER_TENSOR = -1


# Converters let attributes be built from plain values; wrapped values pass through unchanged.
def _floats(xs: Sequence[float] | ArrayAttr[FloatData]) -> ArrayAttr[FloatData]:
    if isinstance(xs, ArrayAttr):
        return xs
    return ArrayAttr([FloatData(float(x)) for x in xs])


def _ints(xs: Sequence[int] | ArrayAttr[IntAttr]) -> ArrayAttr[IntAttr]:
    if isinstance(xs, ArrayAttr):
        return xs
    return ArrayAttr([IntAttr(int(x)) for x in xs])


def _int(x: int | bool | IntAttr) -> IntAttr:
    return x if isinstance(x, IntAttr) else IntAttr(int(x))


def _float(x: float | FloatData) -> FloatData:
    return x if isinstance(x, FloatData) else FloatData(float(x))


def _string(x: str | StringAttr) -> StringAttr:
    return x if isinstance(x, StringAttr) else StringAttr(x)


def float_text(x: float) -> str:
    """`x` as an MLIR float literal that reads back to the same double (`1e-05` -> `1.0e-05`)."""
    text = repr(float(x))
    if "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _parse_number(parser: AttrParser) -> float:
    return float(parser.parse_number())


def storage_type(bits: int, signed: bool) -> IntegerType:
    """The integer element type that holds values quantized to `bits` (`si8`, `ui4`, ...)."""
    return IntegerType(bits, Signedness.SIGNED if signed else Signedness.UNSIGNED)


@irdl_attr_definition
class QuantParamsAttr(ParametrizedAttribute):
    """Scales, zero points, bit width and signedness of a quantized tensor.

    `axis` is the channel axis of per-channel parameters, or -1 for one scale for the tensor.
    """

    name = "qnn.qparams"

    scale: ArrayAttr[FloatData] = param_def(converter=_floats)
    zero_point: ArrayAttr[IntAttr] = param_def(converter=_ints)
    bits: IntAttr = param_def(converter=_int)
    signed: IntAttr = param_def(converter=_int)
    axis: IntAttr = param_def(converter=_int)

    @staticmethod
    def get(
        scales: Sequence[float],
        zero_points: Sequence[int],
        bits: int,
        signed: bool,
        axis: int = PER_TENSOR,
    ) -> QuantParamsAttr:
        """Parameters from plain values; `axis` -1 means one scale for the whole tensor."""
        return QuantParamsAttr(
            _floats(scales), _ints(zero_points), IntAttr(bits), IntAttr(int(signed)), IntAttr(axis)
        )

    @staticmethod
    def per_tensor(scale: float, zero_point: int, bits: int, signed: bool) -> QuantParamsAttr:
        return QuantParamsAttr.get([scale], [zero_point], bits, signed)

    @property
    def scales(self) -> list[float]:
        return [s.data for s in self.scale.data]

    @property
    def zero_points(self) -> list[int]:
        return [z.data for z in self.zero_point.data]

    @property
    def is_signed(self) -> bool:
        return bool(self.signed.data)

    @property
    def is_per_channel(self) -> bool:
        return self.axis.data != PER_TENSOR

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits.data - 1)) if self.is_signed else 0

    @property
    def qmax(self) -> int:
        bits = self.bits.data
        return (1 << (bits - 1)) - 1 if self.is_signed else (1 << bits) - 1

    @property
    def element_type(self) -> IntegerType:
        return storage_type(self.bits.data, self.is_signed)

    def verify(self) -> None:
        bits = self.bits.data
        if bits not in QUANT_BITS:
            raise VerifyException(
                f"Quantization bit width {bits} is not supported; use one of {list(QUANT_BITS)}."
            )
        if len(self.scale) != len(self.zero_point):
            raise VerifyException(
                f"Quantization parameters have {len(self.scale)} scales but "
                f"{len(self.zero_point)} zero points; give one zero point per scale."
            )
        if not self.is_per_channel and len(self.scale) != 1:
            raise VerifyException(
                f"Per-tensor quantization parameters need exactly one scale, got "
                f"{len(self.scale)}; set an axis for per-channel parameters."
            )
        if self.axis.data < PER_TENSOR:
            raise VerifyException(f"Quantization axis {self.axis.data} is negative.")
        for s in self.scales:
            if not (math.isfinite(s) and s > 0):
                raise VerifyException(f"Quantization scale {s} is not a positive finite number.")
        for z in self.zero_points:
            if not self.qmin <= z <= self.qmax:
                raise VerifyException(
                    f"Zero point {z} lies outside the range [{self.qmin}, {self.qmax}] "
                    f"of {self.element_type}."
                )

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        with parser.in_angle_brackets():
            elem = parser.parse_type()
            if not isinstance(elem, IntegerType) or elem.signedness.data == Signedness.SIGNLESS:
                parser.raise_error("expected a signed or unsigned storage type such as si8 or ui4")
            axis = PER_TENSOR
            parser.parse_punctuation(",")
            if parser.parse_optional_keyword("axis") is not None:
                parser.parse_punctuation("=")
                axis = parser.parse_integer(allow_negative=False)
                parser.parse_punctuation(",")
            parser.parse_keyword("scale")
            parser.parse_punctuation("=")
            scales = parser.parse_comma_separated_list(
                parser.Delimiter.SQUARE, lambda: _parse_number(parser)
            )
            parser.parse_punctuation(",")
            parser.parse_keyword("zp")
            parser.parse_punctuation("=")
            zps = parser.parse_comma_separated_list(parser.Delimiter.SQUARE, parser.parse_integer)
        signed = elem.signedness.data == Signedness.SIGNED
        return (
            _floats(scales),
            _ints(zps),
            IntAttr(elem.width.data),
            IntAttr(int(signed)),
            IntAttr(axis),
        )

    def print_parameters(self, printer: Printer) -> None:
        # repr() of a Python float reads back to the same double.
        axis = f"axis = {self.axis.data}, " if self.is_per_channel else ""
        scales = ", ".join(float_text(s) for s in self.scales)
        zps = ", ".join(str(z) for z in self.zero_points)
        printer.print_string(f"<{self.element_type}, {axis}scale = [{scales}], zp = [{zps}]>")


# Rounding of integer rescaling, part of the bit-exactness contract (METHODS.md): "gemmlowp"
# rounds twice (SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT), as TFLite's
# reference kernels do; "single" rounds once on the 64-bit product.
ROUNDING_MODES = ("gemmlowp", "single")


def check_rounding(op: QnnOp, rounding: StringAttr | None) -> None:
    if rounding is None or rounding.data not in ROUNDING_MODES:
        given = "none" if rounding is None else f"'{rounding.data}'"
        raise op.fail(f"rounding {given} is not known; use one of {', '.join(ROUNDING_MODES)}.")


ACTIVATIONS = ("relu", "clamp")


@irdl_attr_definition
class ActivationAttr(ParametrizedAttribute):
    """An activation fused into the op that produces its input: `relu` or `clamp lo, hi`."""

    name = "qnn.act"

    kind: StringAttr = param_def(converter=_string)
    lo: FloatData = param_def(converter=_float)
    hi: FloatData = param_def(converter=_float)

    @staticmethod
    def relu() -> ActivationAttr:
        return ActivationAttr(StringAttr("relu"), FloatData(0.0), FloatData(math.inf))

    @staticmethod
    def clamp(lo: float, hi: float) -> ActivationAttr:
        return ActivationAttr(StringAttr("clamp"), FloatData(float(lo)), FloatData(float(hi)))

    @property
    def bounds(self) -> tuple[float, float]:
        return self.lo.data, self.hi.data

    def verify(self) -> None:
        kind = self.kind.data
        if kind not in ACTIVATIONS:
            raise VerifyException(
                f"Activation '{kind}' is not known; use one of {', '.join(ACTIVATIONS)}."
            )
        if kind == "relu" and self.bounds != (0.0, math.inf):
            raise VerifyException("A relu activation clamps to [0, inf); use clamp for others.")
        if kind == "clamp" and not (math.isfinite(self.lo.data) and math.isfinite(self.hi.data)):
            raise VerifyException("Clamp bounds must be finite numbers.")
        if not self.lo.data < self.hi.data:
            raise VerifyException(
                f"Activation bounds [{self.lo.data}, {self.hi.data}] are empty; "
                "the lower bound must be below the upper bound."
            )

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        with parser.in_angle_brackets():
            if parser.parse_optional_keyword("relu") is not None:
                return ActivationAttr.relu().parameters
            parser.parse_keyword("clamp")
            lo = _parse_number(parser)
            parser.parse_punctuation(",")
            hi = _parse_number(parser)
        return ActivationAttr.clamp(lo, hi).parameters

    def print_parameters(self, printer: Printer) -> None:
        if self.kind.data == "relu":
            printer.print_string("<relu>")
            return
        printer.print_string(f"<clamp {float_text(self.lo.data)}, {float_text(self.hi.data)}>")


CALIBRATION_METHODS = ("minmax", "percentile", "mse")


@irdl_attr_definition
class CalibrationAttr(ParametrizedAttribute):
    """The real range [lo, hi] to quantize a tensor to, per activation bit width.

    `calibrate` records one on each op's result (and each function argument) from sample runs:
    `#qnn.calib<mse, 8 = [0.0, 3.2], 4 = [0.0, 2.5], 2 = [0.0, 1.4]>`. For min/max all widths
    share a range; percentile and MSE-optimal clipping pick a tighter one for fewer bits.
    """

    name = "qnn.calib"

    method: StringAttr = param_def(converter=_string)
    bits: ArrayAttr[IntAttr] = param_def(converter=_ints)
    lo: ArrayAttr[FloatData] = param_def(converter=_floats)
    hi: ArrayAttr[FloatData] = param_def(converter=_floats)

    @staticmethod
    def get(method: str, ranges: dict[int, tuple[float, float]]) -> CalibrationAttr:
        widths = sorted(ranges, reverse=True)
        return CalibrationAttr(
            StringAttr(method),
            _ints(widths),
            _floats([ranges[b][0] for b in widths]),
            _floats([ranges[b][1] for b in widths]),
        )

    @property
    def ranges(self) -> dict[int, tuple[float, float]]:
        return {
            b.data: (lo.data, hi.data)
            for b, lo, hi in zip(self.bits.data, self.lo.data, self.hi.data, strict=True)
        }

    def verify(self) -> None:
        if self.method.data not in CALIBRATION_METHODS:
            raise VerifyException(
                f"Calibration method '{self.method.data}' is not known; use one of "
                f"{', '.join(CALIBRATION_METHODS)}."
            )
        if not len(self.bits) == len(self.lo) == len(self.hi) >= 1:
            raise VerifyException("A calibration needs one [lo, hi] range per bit width.")
        for b, (lo, hi) in self.ranges.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise VerifyException(f"Calibration range [{lo}, {hi}] for {b} bits is invalid.")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        ranges: dict[int, tuple[float, float]] = {}
        with parser.in_angle_brackets():
            method = parser.parse_identifier()
            while parser.parse_optional_punctuation(",") is not None:
                bits = parser.parse_integer(allow_negative=False)
                parser.parse_punctuation("=")
                parser.parse_punctuation("[")
                lo = _parse_number(parser)
                parser.parse_punctuation(",")
                hi = _parse_number(parser)
                parser.parse_punctuation("]")
                ranges[bits] = (lo, hi)
        return CalibrationAttr.get(method, ranges).parameters

    def print_parameters(self, printer: Printer) -> None:
        ranges = ", ".join(
            f"{b} = [{float_text(lo)}, {float_text(hi)}]" for b, (lo, hi) in self.ranges.items()
        )
        printer.print_string(f"<{self.method.data}, {ranges}>")


# The widths a layer's weights and input activation may be chosen at: the BitFusion bricks.
LAYER_WIDTHS = (2, 4, 8)
# The key under which a float conv2d/linear carries its chosen widths.
BITS_ATTR = "bits"
# The text of the widths: `w8a8`, `w4` (weights only) or `a4` (activation only).
BITS_TEXT = r"(?:w(?P<w>\d+))?(?:a(?P<a>\d+))?"
_BITS_TEXT = re.compile(BITS_TEXT)


@irdl_attr_definition
class BitsAttr(ParametrizedAttribute):
    """The bit widths chosen for one conv2d/linear layer: `#qnn.bits<w4a8>`, `<w4>`, `<a4>`.

    `weight` is the width of the layer's weights and `act` that of the activation it reads (the
    two operands of its multiplies); 0 leaves that width to `quantize`'s options. A float layer
    carries it under the key `bits` (`{bits = #qnn.bits<w8a8>}`), written by `set-bits`,
    `quantize{overrides=...}` or any pass that chooses widths, and read by `quantize`. An
    integer layer carries none: its widths are in its types.
    """

    name = "qnn.bits"

    weight: IntAttr = param_def(converter=_int)
    act: IntAttr = param_def(converter=_int)

    @staticmethod
    def get(weight: int, act: int) -> BitsAttr:
        """The widths `weight` and `act` (0: not chosen)."""
        return BitsAttr(IntAttr(weight), IntAttr(act))

    @property
    def text(self) -> str:
        """The widths as written inside the brackets: `w4a8`, `w4` or `a4`."""
        w, a = self.weight.data, self.act.data
        return (f"w{w}" if w else "") + (f"a{a}" if a else "")

    def verify(self) -> None:
        w, a = self.weight.data, self.act.data
        if not (w or a):
            raise VerifyException(
                "A #qnn.bits attribute needs a weight width, an activation width or both, "
                "such as w8a8, w4 or a4."
            )
        widths = ", ".join(str(b) for b in LAYER_WIDTHS[:-1]) + f" or {LAYER_WIDTHS[-1]}"
        for bits, what in ((w, "Weight"), (a, "Activation")):
            if bits and bits not in LAYER_WIDTHS:
                raise VerifyException(
                    f"{what} bit width {bits} is not supported for a layer; use {widths}."
                )

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        with parser.in_angle_brackets():
            start = parser.pos
            text = parser.parse_optional_identifier()
            match = _BITS_TEXT.fullmatch(text or "")
            if text is None or match is None or not (match["w"] or match["a"]):
                parser.raise_error(
                    "expected the widths of a layer, weights first: w8a8, w4 or a4",
                    start,
                    parser.pos,
                )
            try:
                # Checked here, where the error can point at the text.
                bits = BitsAttr.get(int(match["w"] or 0), int(match["a"] or 0))
            except VerifyException as error:
                parser.raise_error(str(error), start, parser.pos)
        return bits.parameters

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self.text}>")
