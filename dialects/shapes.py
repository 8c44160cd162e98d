"""Shape arithmetic shared by the dialect's verifiers and the runtime's kernels (no xDSL here,
so the simulator side can import it)."""

from __future__ import annotations


def window_out(
    size: int,
    kernel: int,
    stride: int,
    pad_lo: int,
    pad_hi: int,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Output length of a sliding window, as torch computes it for convolutions and pooling.

    With `ceil_mode` a last, partial window is kept if it starts inside the input or its
    top/left padding, never in the bottom/right padding (torch's rule).
    """
    span = size + pad_lo + pad_hi - dilation * (kernel - 1) - 1
    if span < 0:
        return 0
    out = (span + stride - 1) // stride + 1 if ceil_mode else span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad_lo:
        out -= 1
    return out
