"""`dopant compare`: every layer of the simulator against the integer reference (exact, and the
first corrupted layer named) and of the integer reference against float (SNR)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dopant.backend.binary import read_program, write_program
from dopant.backend.emit import emit_binary
from dopant.compiler.cli import main
from dopant.compiler.compare import compare, compare_program
from dopant.compiler.driver import CompiledModel, compile
from dopant.compiler.evaluate import snr_db
from dopant.compiler.models import zoo
from dopant.compiler.models.datasets import load_sample
from dopant.dialects.accel import SegmentOp
from dopant.dialects.qnn.values import float_name
from dopant.runtime import reference
from dopant.support.errors import InputError


@pytest.fixture(scope="module")
def resnet8() -> tuple[torch.nn.Module, CompiledModel, np.ndarray]:
    torch.manual_seed(0)
    calib, test = load_sample()
    model = zoo.get("resnet8").build().eval()
    compiled = compile(model, torch.from_numpy(calib.x[:1]), target="small8", calibration=calib.x)
    return model, compiled, test.x[:3]


def test_a_correct_binary_is_exact_on_every_layer_value(
    resnet8: tuple[torch.nn.Module, CompiledModel, np.ndarray],
) -> None:
    model, compiled, x = resnet8
    result = compare(compiled, x)
    names = [row.name for row in result.layers]
    # Every value the reference computes that lives in DRAM: each conv's requantized output,
    # the residual adds, the pool and the classifier, in execution order.
    traced = reference.trace(compiled.ir("quantized"), x[:1])
    assert names == [n for n in traced if n in set(names)]
    assert "layer1.0/add" in names and names[-1] == "fc/requantize" and len(names) == 14
    assert all(row.mismatched == 0 and row.max_abs_diff == 0 for row in result.layers)
    assert result.first_mismatch() is None and result.images == 3
    # The classifier's SNR against float is the SNR of the simulator's dequantized logits
    # against torch's own output for the same images.
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    simulated = np.concatenate([compiled.run(image[None]).outputs[0] for image in x])
    assert result.layers[-1].snr_db == pytest.approx(snr_db(logits, simulated), abs=0.05)
    assert "bit-exact on every layer" in result.summary()


def test_a_corrupted_layer_is_named_as_the_first_divergence(
    resnet8: tuple[torch.nn.Module, CompiledModel, np.ndarray],
) -> None:
    _, compiled, x = resnet8
    accel = compiled.ir("accel").clone()
    (weights,) = [
        op
        for op in accel.walk()
        if isinstance(op, SegmentOp) and op.path.data == "layer2.0.conv1.weight"
    ]
    negated = SegmentOp.make(weights.dram.value.data, -weights.numpy(), weights.element(), "w")
    weights.value = negated.value
    broken = dataclasses.replace(compiled, binary=emit_binary(accel), _program=None)
    result = compare(broken, x[:1])
    first = result.first_mismatch()
    assert first is not None and first.name == "layer2.0.conv1/requantize"
    names = [row.name for row in result.layers]
    before = result.layers[: names.index(first.name)]
    assert before and all(row.mismatched == 0 for row in before)
    assert "first diverges at 'layer2.0.conv1/requantize'" in result.summary()


def test_the_first_layer_below_the_snr_threshold(
    resnet8: tuple[torch.nn.Module, CompiledModel, np.ndarray],
) -> None:
    _, compiled, x = resnet8
    scores = [row.snr_db for row in compare(compiled, x[:1]).layers]
    assert all(s is not None and 10.0 < s < 80.0 for s in scores)  # 8-bit: tens of dB
    middle = sorted(s for s in scores if s is not None)[len(scores) // 2]
    result = compare(compiled, x[:1], snr_threshold_db=middle + 1e-9)
    below = result.first_below_threshold()
    expected = next(row for row in result.layers if row.snr_db is not None and row.snr_db <= middle)
    assert below is not None and below.name == expected.name
    assert compare(compiled, x[:1], snr_threshold_db=0.0).first_below_threshold() is None


def test_float_names_drop_the_requantize_suffix_and_keep_the_reuse_count() -> None:
    assert float_name("layer1.0.conv1/requantize") == "layer1.0.conv1"
    assert float_name("relu/requantize#2") == "relu#2"
    assert float_name("layer1.0/add") == "layer1.0/add"


def test_binaries_keep_the_debug_values_and_refuse_bad_input(
    resnet8: tuple[torch.nn.Module, CompiledModel, np.ndarray],
) -> None:
    _, compiled, x = resnet8
    image = read_program(compiled.binary)
    assert [v.name for v in image.values][:2] == ["conv1/requantize", "layer1.0.conv1/requantize"]
    assert image.values[0].shape == (1, 16, 28, 28) and image.values[0].bits == 8
    stripped = dataclasses.replace(image, values=())
    bare = dataclasses.replace(compiled, binary=write_program(stripped), _program=None)
    with pytest.raises(InputError, match="has no debug values"):
        compare(bare, x)
    with pytest.raises(InputError, match=r"batch of images \(N, ...\), got shape \(\)"):
        compare(compiled, np.float32(1.0))


def test_cli_compare_prints_the_table_and_the_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compare", "zoo:mlp", "--target", "small8", "--calibration", "sample"]
    assert main([*args, "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "sim != ref" in out and "0 (exact)" in out
    assert "compared 3 layer values on 2 image(s)" in out
    assert "simulator vs integer reference: bit-exact on every layer" in out
    assert main([*args, "--images", "0"]) == 1
    assert capsys.readouterr().err.strip() == "dopant: error: --images must be at least 1, got 0."
    assert main([*args, "--ir", "q.mlir"]) == 1
    assert capsys.readouterr().err.strip() == (
        "dopant: error: --ir and --float-ir go with a .dpb binary, not with a model."
    )


def test_cli_compares_a_binary_edited_by_hand_with_its_ir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net, quantized, patched = tmp_path / "net.dpb", tmp_path / "q.mlir", tmp_path / "p.dpb"
    args = ["zoo:lenet5", "--target", "small8", "--calibration", "sample"]
    main(["compile", *args, "-o", str(net), "--emit", "quantized"])
    quantized.write_text(capsys.readouterr().out)
    assert main(["compare", str(net), "--ir", str(quantized), "--images", "1"]) == 0
    assert "bit-exact on every layer" in capsys.readouterr().out
    # Clamp the second conv's outputs at 1 instead of 255 (its store_acc's `hi` field). The
    # listing's header gives each layer's instruction range.
    main(["disasm", str(net), "-o", str(tmp_path / "net.s")])
    lines = (tmp_path / "net.s").read_text().splitlines()
    (header,) = [line for line in lines if line.startswith("# layer features.3:")]
    start, stop = map(int, header.split("[")[1].rstrip(")").split(", "))
    code = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    edited = list(lines)
    for i in code[start:stop]:
        if edited[i].startswith("store_acc"):
            edited[i] = edited[i].replace(" hi=255", " hi=1")
    assert edited != lines
    (tmp_path / "p.s").write_text("\n".join(edited) + "\n")
    main(["asm", str(tmp_path / "p.s"), "--binary", str(net), "-o", str(patched)])
    assert main(["compare", str(patched), "--ir", str(quantized), "--images", "1"]) == 1
    captured = capsys.readouterr()
    assert "first diverges at 'features.3/requantize'" in captured.out
    assert "diverges from the integer reference first at 'features.3/requantize'" in captured.err
    assert main(["compare", str(net)]) == 1
    assert "needs --ir, the quantized .mlir" in capsys.readouterr().err


def test_a_binary_compared_with_another_networks_ir_is_refused(
    resnet8: tuple[torch.nn.Module, CompiledModel, np.ndarray],
) -> None:
    _, compiled, x = resnet8
    other = compile(
        zoo.get("lenet5").build().eval(), torch.from_numpy(x[:1]), target="small8", calibration=x
    )
    with pytest.raises(InputError, match=r"is not the IR this binary was compiled from"):
        compare_program(other.program, compiled.ir("quantized"), x[:1])
    unrecorded = dataclasses.replace(other.program, source="")  # as `dopant opt` pipelines emit
    with pytest.raises(
        InputError, match=r"'features\.0/requantize' is not a value of the quantized"
    ):
        compare_program(unrecorded, compiled.ir("quantized"), x[:1])
