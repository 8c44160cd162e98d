"""The standard fold model (`backend.costs.fold_model_cycles`, SCALE-Sim's per-fold formula on
the untiled layer) worked by hand; the `accel.layer` op that carries a layer's GEMM through
the IR; and compiled zoo layers whose reported fold model is that of the whole layer, not a sum
over its tiles. The binary's DEBUG entries are tested with the container in test_binary.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from xdsl.dialects.builtin import ModuleOp
from xdsl.utils.exceptions import VerifyException

from dopant.backend.costs import fold_model_cycles
from dopant.backend.emit import emit_image
from dopant.backend.presets import preset
from dopant.backend.target import AccelConfig, ConfigError
from dopant.compiler.driver import compile as compile_model
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.models import zoo
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


def compiled_stats(
    model: nn.Module, input_shape: tuple[int, ...], dataflow: str
) -> tuple[dict[str, int], int, ModuleOp]:
    """Each layer's reported fold model and the run's, for `model` on small8, W8A8, through the
    whole driver and the binary; and the accel IR."""
    torch.manual_seed(0)
    x = np.random.default_rng(0).uniform(0, 1, (2, *input_shape[1:])).astype(np.float32)
    compiled = compile_model(
        model.eval(), torch.from_numpy(x[:1]), target="small8", calibration=x, dataflow=dataflow
    )
    stats = compiled.program.stats  # loaded from the binary, checked by the loader
    layers = {layer.name: layer.fold_model_cycles for layer in stats.layers}
    return layers, stats.fold_model_cycles, compiled.ir("accel")


@pytest.mark.parametrize(
    ("dataflow", "stem", "hidden"),
    [
        # LeNet-5's features.0: 1 -> 6 channels, 5x5, padding 2 on 28x28: M = 784, K = 25,
        # N = 6. WS: ceil(25/8) * ceil(6/8) = 4 folds of 16 + 8 + 784 - 2 = 806. Its
        # classifier.1, 400 -> 120: M = 1, K = 400, N = 120; WS ceil(400/8) * ceil(120/8) =
        # 50 * 15 = 750 folds of 16 + 8 + 1 - 2 = 23.
        ("ws", 4 * 806, 750 * 23),
        # OS: ceil(784/8) * 1 = 98 folds of 8 + 8 + 25 - 2 = 39; classifier.1: 1 * 15 folds
        # of 8 + 8 + 400 - 2 = 414.
        ("os", 98 * 39, 15 * 414),
    ],
)
def test_a_compiled_layer_reports_the_fold_model_of_the_whole_layer(
    dataflow: str, stem: int, hidden: int
) -> None:
    entry = zoo.get("lenet5")
    torch.manual_seed(0)
    layers, total, module = compiled_stats(entry.build(), entry.input_shape, dataflow)
    assert (layers["features.0"], layers["classifier.1"]) == (stem, hidden)
    gemms = {g.name: g for g in emit_image(module).gemms}
    assert (gemms["features.0"].m, gemms["features.0"].k, gemms["features.0"].n) == (784, 25, 6)
    assert total == sum(layers.values())  # the run's is the sum of its layers'


@pytest.mark.parametrize(
    ("dataflow", "cycles"),
    [
        # A depthwise conv as MobileNetV2's first (features.3.conv.0): 16 channels, 3x3,
        # stride 1, padding 1 on 32x32: 16 groups of M = 1024, K = 9, N = 1. WS: ceil(9/8) = 2 folds of
        # 16 + 8 + 1024 - 2 = 1046 per group.
        ("ws", 16 * 2 * 1046),
        # OS: ceil(1024/8) = 128 folds of 8 + 8 + 9 - 2 = 23 per group.
        ("os", 16 * 128 * 23),
    ],
)
def test_a_compiled_depthwise_layer_runs_its_groups_one_after_another(
    dataflow: str, cycles: int
) -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1, groups=16))
    layers, _, _ = compiled_stats(model, (1, 3, 32, 32), dataflow)
    assert layers["2"] == cycles
