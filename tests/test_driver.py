"""The compiler driver and `dopant compile`: stages kept, binary bit-exact to the integer
reference of the quantized stage, saved atomically, and failures that name the stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dopant.compiler.cli import main
from dopant.compiler.driver import STAGES, CompileError, compile, compile_module
from dopant.compiler.models import zoo
from dopant.compiler.models.datasets import load_sample
from dopant.runtime import reference
from dopant.runtime.loader import load


def test_compile_keeps_every_stage_and_runs_bit_exact_to_the_reference() -> None:
    torch.manual_seed(0)
    x = load_sample()[0].x[:8]
    model = zoo.get("lenet5").build().eval()
    compiled = compile(model, torch.from_numpy(x[:1]), target="small8", calibration=x)
    assert list(compiled.stages) == list(STAGES)
    assert list(compiled.stage_seconds) == [*STAGES, "binary"]
    assert all(0.0 < t < 60.0 for t in compiled.stage_seconds.values())
    assert not [op for op in compiled.ir("accel").walk() if op.name.startswith("qnn.")]
    (expected,) = reference.run(compiled.ir("quantized"), x[:1])
    (got,) = compiled.run(x[:1]).outputs
    assert np.array_equal(expected, got)
    (from_bytes,) = load(compiled.binary).run(x[:1]).outputs  # the bytes alone suffice
    assert np.array_equal(expected, from_bytes)
    with pytest.raises(CompileError, match="needs calibration samples"):
        compile(model, torch.from_numpy(x[:1]), target="small8")


def test_a_failing_pass_names_its_stage_and_saves_a_reproducer(tiny: str, tmp_path: Path) -> None:
    # One output row of a 3x3 conv over 3 rows of 2000 columns needs 6,000 scratchpad bytes
    # twice, more than the 1 KiB the machine has.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 3, 2000)).astype(np.float32)
    with pytest.raises(CompileError) as error:
        compile(model, torch.from_numpy(x[:1]), target=tiny, calibration=x)
    message = str(error.value)
    assert "stage 'tiled' failed in pass 'tile'" in message and "no tiling of" in message
    saved = Path(message.split("The IR before that pass is in ")[1].split(";")[0])
    assert "qnn.conv2d" in saved.read_text() and "dopant opt " + str(saved) in message
    # In a dopant-* folder of the temporary directory: the test's own (conftest), so a test
    # run leaves no reproducer in the system's.
    assert saved.parent.parent == tmp_path and saved.parent.name.startswith("dopant-")
    assert saved.name == "before-tile.mlir"


def test_cli_compile_writes_a_binary_and_emits_a_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "net.dpb"
    args = ["compile", "zoo:mlp", "--target", "small8", "--calibration", "sample"]
    main([*args, "-o", str(out), "--emit", "tiled"])
    captured = capsys.readouterr()
    assert "tile = {" in captured.out  # the tiled stage's plans
    assert f"-> {out}:" in captured.err and "instructions" in captured.err
    first = out.read_bytes()
    main([*args, "-o", str(out)])
    assert out.read_bytes() == first  # same model and config, same bytes
    assert [p.name for p in tmp_path.iterdir()] == ["net.dpb"]  # no temporary left behind
    main(["profile", str(out)])
    assert "accelerator 'small8'" in capsys.readouterr().out
    assert main([*args, "--emit", "nonsense"]) == 1
    assert "--emit nonsense is not a stage" in capsys.readouterr().err


def test_a_custom_canonical_pipeline_replaces_the_default_passes() -> None:
    torch.manual_seed(0)
    x = load_sample()[0].x[:8]
    model = zoo.get("lenet5").build().eval()
    example = torch.from_numpy(x[:1])
    # Without fuse-activation the ReLUs stay ops of their own and lower to vector instructions.
    compiled = compile(model, example, target="small8", calibration=x, pipeline="fold-batchnorm")
    canonical = [op.name for op in compiled.ir("canonical").walk()]
    assert canonical.count("qnn.relu") == 4  # two after the convs, two in the classifier
    default = compile(model, example, target="small8", calibration=x)
    assert "qnn.relu" not in [op.name for op in default.ir("canonical").walk()]
    assert len(compiled.program.instructions) > len(default.program.instructions)
    (expected,) = reference.run(compiled.ir("quantized"), x[:1])
    assert np.array_equal(expected, compiled.run(x[:1]).outputs[0])
    with pytest.raises(CompileError, match="already quantized, so the float pipeline"):
        compile_module(compiled.ir("quantized"), target="small8", pipeline="fold-batchnorm")
