"""The latency oracle (`driver.latency`): the same statistics as compiling and timing the
binary, from quantized IR, without building a binary or touching the caller's IR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dopant.backend.presets import preset
from dopant.compiler.driver import CompileError, compile_module, latency, quantize_network
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text
from dopant.compiler.models import zoo


def quantized(name: str) -> object:
    entry = zoo.get(name)
    x = np.random.default_rng(0).uniform(0, 1, (2, *entry.input_shape[1:])).astype(np.float32)
    module = import_model(entry.build(), torch.from_numpy(x[:1]))
    return module, quantize_network(module, x)


@pytest.mark.parametrize(
    ("name", "target", "dataflow"),
    [("lenet5", "small8", "ws"), ("resnet8", "edge16", "os"), ("resnet20", "large32", "ws")],
)
def test_the_oracle_equals_the_compiled_binarys_timing(
    name: str, target: str, dataflow: str
) -> None:
    _, q = quantized(name)
    config = preset(target).with_changes(dataflow=dataflow)
    before = ir_text(q)
    fast = latency(q, config)
    assert ir_text(q) == before  # the caller's IR is left as it was
    full = compile_module(q, target=config).program.stats
    assert fast.to_dict() == full.to_dict()  # totals, per layer, per engine, bytes, energy
    assert fast.slots == full.slots  # and every instruction's start and end
    assert fast.total_cycles > 0 and len(fast.layers) > 3
    # A second query of the same network reuses the tile plans and gives the same answer.
    assert latency(q, config).to_dict() == full.to_dict()


def test_the_oracle_takes_a_preset_name_and_refuses_float_ir() -> None:
    module, q = quantized("mlp")
    assert latency(q, "edge16").total_cycles == latency(q, preset("edge16")).total_cycles
    with pytest.raises(CompileError, match="latency needs quantized qnn IR"):
        latency(module, "edge16")
