"""Tiny hand-written programs timed on the machine model: the helpers the timing tests share."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from dopant.backend.asm import parse_assembly
from dopant.backend.image import LayerGemm
from dopant.backend.presets import preset
from dopant.backend.target import AccelConfig
from dopant.runtime.program import LayerRange, Program
from dopant.runtime.stats import RunStats

# 8 x 8 array, 8 DRAM bytes per cycle, 8 vector lanes, 4 DMAs in flight per engine, 200 MHz;
# latency cut to 10 cycles.
FAST = preset("small8").with_changes(dram_latency_cycles=10)
OS = FAST.with_changes(dataflow="os")


def timed(
    text: str,
    config: AccelConfig = FAST,
    layers: Sequence[LayerRange] = (),
    gemms: Sequence[LayerGemm] = (),
) -> RunStats:
    code = tuple(parse_assembly(textwrap.dedent(text)))
    program = Program(
        config_hash=config.stable_hash(),
        config=config.to_dict(),
        instructions=code,
        segments=(),
        inputs=(),
        outputs=(),
        layers=tuple(layers),
        dram_bytes=1 << 20,
        gemms=tuple(gemms),
    )
    return program.stats


def conv_line(w_bits: int = 8, a_bits: int = 8, **extra: int) -> str:
    """The running example: 3 x 6 x 7 input, 10 filters of 3 x 3, 4 x 5 outputs, so
    M = 4 * 5 = 20, K = 3 * 3 * 3 = 27, N = 10, and 5400 MACs."""
    fields = dict(c_in=3, ih=6, iw=7, n=10, groups=1, kh=3, kw=3, stride_h=1, stride_w=1)
    fields |= dict(dil_h=1, dil_w=1, oh=4, ow=5, w_bits=w_bits, a_bits=a_bits) | extra
    return "conv " + " ".join(f"{k}={v}" for k, v in fields.items())
