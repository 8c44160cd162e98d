"""The standard fold model (`backend.costs.fold_model_cycles`, SCALE-Sim's per-fold formula on
the untiled layer) worked by hand, and the `accel.layer` op that carries a layer's GEMM through
the IR."""

from __future__ import annotations

import pytest
from xdsl.dialects.builtin import ModuleOp
from xdsl.utils.exceptions import VerifyException

from dopant.backend.costs import fold_model_cycles
from dopant.backend.presets import preset
from dopant.backend.target import AccelConfig, ConfigError
from dopant.compiler.irio import ir_text, parse_ir
from dopant.dialects.accel import LayerOp

SMALL8, EDGE16 = preset("small8"), preset("edge16")  # 8 x 8 and 16 x 16 arrays

# SCALE-Sim (Samajdar et al., ISPASS 2020), R x C array, nothing overlapped between folds:
#   WS: ceil(K / R) * ceil(N / C) folds of 2R + C + M - 2 cycles;
#   OS: ceil(M / R) * ceil(N / C) folds of  R + C + K - 2 cycles.
# Layers (m, k, n, groups), per group:
#   conv 3 -> 24, 3x3, 30x30 outputs: M = 900, K = 3 * 3 * 3 = 27, N = 24;
#   fc 300 -> 130: M = 1, K = 300, N = 130;
#   depthwise 96 channels, 3x3, 8x8 outputs: 96 groups of M = 64, K = 9, N = 1.
CONV, FC, DEPTHWISE = (900, 27, 24, 1), (1, 300, 130, 1), (64, 9, 1, 96)
W8A8 = [
    # conv, small8: WS ceil(27/8) * ceil(24/8) = 4 * 3 = 12 folds of 16 + 8 + 900 - 2 = 922.
    (CONV, SMALL8, "ws", 12 * 922),
    # OS ceil(900/8) * 3 = 113 * 3 = 339 folds of 8 + 8 + 27 - 2 = 41.
    (CONV, SMALL8, "os", 339 * 41),
    # conv, edge16: WS ceil(27/16) * ceil(24/16) = 2 * 2 = 4 folds of 32 + 16 + 900 - 2 = 946.
    (CONV, EDGE16, "ws", 4 * 946),
    # OS ceil(900/16) * 2 = 57 * 2 = 114 folds of 16 + 16 + 27 - 2 = 57.
    (CONV, EDGE16, "os", 114 * 57),
    # fc, small8: WS ceil(300/8) * ceil(130/8) = 38 * 17 = 646 folds of 16 + 8 + 1 - 2 = 23.
    (FC, SMALL8, "ws", 646 * 23),
    # OS ceil(1/8) * 17 = 17 folds of 8 + 8 + 300 - 2 = 314.
    (FC, SMALL8, "os", 17 * 314),
    # fc, edge16: WS ceil(300/16) * ceil(130/16) = 19 * 9 = 171 folds of 32 + 16 + 1 - 2 = 47.
    (FC, EDGE16, "ws", 171 * 47),
    # OS 1 * 9 = 9 folds of 16 + 16 + 300 - 2 = 330.
    (FC, EDGE16, "os", 9 * 330),
    # depthwise, small8: per group WS ceil(9/8) * 1 = 2 folds of 16 + 8 + 64 - 2 = 86.
    (DEPTHWISE, SMALL8, "ws", 96 * 2 * 86),
    # OS ceil(64/8) * 1 = 8 folds of 8 + 8 + 9 - 2 = 23.
    (DEPTHWISE, SMALL8, "os", 96 * 8 * 23),
    # depthwise, edge16: per group WS 1 fold of 32 + 16 + 64 - 2 = 110.
    (DEPTHWISE, EDGE16, "ws", 96 * 110),
    # OS ceil(64/16) = 4 folds of 16 + 16 + 9 - 2 = 39.
    (DEPTHWISE, EDGE16, "os", 96 * 4 * 39),
]


@pytest.mark.parametrize(("layer", "config", "dataflow", "cycles"), W8A8)
def test_the_fold_model_is_scale_sims_at_eight_bits(
    layer: tuple[int, int, int, int], config: AccelConfig, dataflow: str, cycles: int
) -> None:
    m, k, n, groups = layer
    assert (
        fold_model_cycles(m, k, n, groups, 8, 8, config.with_changes(dataflow=dataflow)) == cycles
    )


# BitFusion: fa = 8 / a_bits, fw = 8 / w_bits. WS covers K in rows of R * fa and N in columns
# of C * fw; OS streams K in ceil(K / (fa * fw)) cycles; R and C in fill and drain stay as built.
FUSED = [
    # conv on edge16, w4a4 (fa = fw = 2): WS ceil(27/32) * ceil(24/32) = 1 fold of 946.
    (4, 4, "ws", 946),
    # OS 114 folds of 16 + 16 + ceil(27/4) - 2 = 37.
    (4, 4, "os", 114 * 37),
    # w2a8 (fa = 1, fw = 4): WS ceil(27/16) * ceil(24/64) = 2 folds of 946.
    (2, 8, "ws", 2 * 946),
    # OS fa * fw = 4 as well: 114 * 37.
    (2, 8, "os", 114 * 37),
    # w8a2 (fa = 4, fw = 1): WS ceil(27/64) * ceil(24/16) = 2 folds of 946.
    (8, 2, "ws", 2 * 946),
]


@pytest.mark.parametrize(("w_bits", "a_bits", "dataflow", "cycles"), FUSED)
def test_fusion_widens_a_pe_not_the_array(
    w_bits: int, a_bits: int, dataflow: str, cycles: int
) -> None:
    machine = EDGE16.with_changes(dataflow=dataflow)
    assert fold_model_cycles(*CONV, w_bits, a_bits, machine) == cycles


def test_the_fold_model_refuses_widths_the_machine_does_not_fuse() -> None:
    with pytest.raises(ConfigError, match="does not fuse to w4a8"):
        fold_model_cycles(*CONV, 4, 8, EDGE16.with_changes(weight_bits=(8,)))


def test_the_layer_op_round_trips_and_verifies_in_sentences() -> None:
    op = LayerOp.make("features.0", m=784, k=25, n=6, groups=1, w_bits=8, a_bits=8)
    text = ir_text(ModuleOp([op]))
    assert 'accel.layer "features.0" m 784 k 25 n 6 groups 1 w_bits 8 a_bits 8' in text
    assert ir_text(parse_ir(text)) == text
    parsed = next(iter(parse_ir(text).body.block.ops))
    assert isinstance(parsed, LayerOp) and parsed.gemm() == {
        "m": 784,
        "k": 25,
        "n": 6,
        "groups": 1,
        "w_bits": 8,
        "a_bits": 8,
    }
    with pytest.raises(
        VerifyException, match=r'^accel\.layer at "x" has k=0; it must be at least 1\.'
    ):
        LayerOp.make("x", m=1, k=0, n=1, groups=1, w_bits=8, a_bits=8).verify()
    with pytest.raises(VerifyException, match="needs the module path of its layer"):
        LayerOp.make("", m=1, k=1, n=1, groups=1, w_bits=8, a_bits=8).verify()
