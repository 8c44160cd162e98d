"""A new user's first hour through the CLI: their own weights, a zoo model that says whether it
is trained, model files beside their helpers, options checked before any work, the version,
warnings for bit widths the machine lacks, and a compare that knows which IR a binary is of."""

from __future__ import annotations

import io
import re
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from dopant.compiler import driver
from dopant.compiler.cli import main
from dopant.compiler.evaluate import accuracy
from dopant.compiler.irio import read_ir
from dopant.compiler.models import load as load_module
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.compiler.models.weights import save_weights


def _perturbed_lenet5() -> torch.nn.Module:
    """The shipped LeNet-5 with every weight nudged: a model of the user's own, whose
    accuracy differs from the shipped one."""
    model = load_pretrained("lenet5")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.4 * p.abs().mean() * torch.randn(p.shape, generator=generator))
    return model


def _torch_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _float_ir_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return accuracy(read_ir(str(path)), x, y)  # the reference interpreter on the float IR


def test_version_names_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"dopant {version('dopant')}"


@pytest.mark.parametrize("wrap", ["plain", "checkpoint"])
def test_a_users_state_dict_gives_torchs_accuracy_through_the_cli(
    tmp_path: Path, wrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _perturbed_lenet5()
    state = model.state_dict()
    if wrap == "checkpoint":  # a training script's checkpoint, saved from nn.DataParallel
        state = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(state, tmp_path / "mine.pt")
    out = tmp_path / "mine.mlir"
    assert (
        main(["import", "zoo:lenet5", "--weights", str(tmp_path / "mine.pt"), "-o", str(out)]) == 0
    )
    test = load_sample()[1].subset(500)
    want = _torch_accuracy(model, test.x, test.y)
    assert want != _torch_accuracy(load_pretrained("lenet5"), test.x, test.y)  # really ours
    np.savez(tmp_path / "test.npz", x=test.x, y=test.y)
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(tmp_path / "test.npz")]) == 0
    printed = re.search(r"top-1 accuracy ([\d.]+)% on 500 images", capsys.readouterr().out)
    assert printed is not None
    # `dopant eval` of the float IR against torch: at most one near-tie may flip.
    assert abs(float(printed[1]) / 100 - want) <= 1 / len(test)


def test_dopant_npz_weights_load_like_a_state_dict(tmp_path: Path) -> None:
    model = _perturbed_lenet5()
    save_weights(model, tmp_path / "mine.npz")  # what `dopant train -o` writes
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    for name in ("mine.npz", "mine.pt"):
        args = ["import", "zoo:lenet5", "--weights", str(tmp_path / name)]
        assert main([*args, "-o", str(tmp_path / f"{name}.mlir")]) == 0
    npz, pt = ((tmp_path / f"{n}.mlir").read_text() for n in ("mine.npz", "mine.pt"))
    assert npz.replace("mine.npz", "mine.pt") == pt  # the same IR but for the recorded file name


def test_weights_that_do_not_fit_are_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_pretrained("lenet5").state_dict()
    state["features.0.weight"] = state["features.0.weight"][:3]
    torch.save(state, tmp_path / "bad.pt")
    assert main(["import", "zoo:lenet5", "--weights", str(tmp_path / "bad.pt")]) == 1
    err = capsys.readouterr().err
    assert "key 'features.0.weight' has shape (3, 1, 5, 5)" in err
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert main(["import", "zoo:lenet5", "--weights", str(tmp_path / "junk.pt")]) == 1
    assert "is neither a dopant .npz nor a torch file of tensors" in capsys.readouterr().err


def test_zoo_models_say_whether_they_are_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["zoo"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "trained (Fashion-MNIST)" in rows["zoo:resnet8"] and "untrained" in rows["zoo:mlp"]
    assert main(["import", "zoo:mlp", "-o", str(tmp_path / "mlp.mlir")]) == 0
    assert "dopant: warning: zoo:mlp has no trained weights" in capsys.readouterr().err
    assert 'qnn.weights = "untrained' in (tmp_path / "mlp.mlir").read_text()
    assert main(["import", "zoo:lenet5", "-o", str(tmp_path / "lenet5.mlir")]) == 0
    assert capsys.readouterr().err == ""
    text = (tmp_path / "lenet5.mlir").read_text()
    assert 'qnn.weights = "zoo:lenet5 shipped Fashion-MNIST weights' in text


def test_the_cli_imports_the_shipped_weights_for_zoo_lenet5(tmp_path: Path) -> None:
    assert main(["import", "zoo:lenet5", "-o", str(tmp_path / "lenet5.mlir")]) == 0
    test = load_sample()[1].subset(200)
    want = _torch_accuracy(load_pretrained("lenet5"), test.x, test.y)
    assert want > 0.85  # trained, not chance (0.10)
    assert abs(_float_ir_accuracy(tmp_path / "lenet5.mlir", test.x, test.y) - want) <= 1 / 200


def test_a_model_file_imports_the_module_beside_it(tmp_path: Path) -> None:
    (tmp_path / "blocks.py").write_text(
        "import torch\n"
        "def block(c):\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(c, 4, 3), torch.nn.ReLU())\n"
    )
    (tmp_path / "net.py").write_text(
        "from blocks import block\ndef build():\n    return block(2)\n"
    )
    out = tmp_path / "net.mlir"
    assert (
        main(["import", f"{tmp_path / 'net.py'}:build", "--input-shape", "1,2,6,6", "-o", str(out)])
        == 0
    )
    assert "qnn.conv2d" in out.read_text()
    assert str(tmp_path) not in sys.path  # the folder is on the path only while loading


def _no_import(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model was imported before the options were checked")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "edge99"], "unknown accelerator preset 'edge99'"),
        (["--override", "conv1=w3a8"], "the weight bits of 'conv1=w3a8'=3 is not supported"),
        (["--override", "conv1"], "override 'conv1' is not of the form path=wXaY"),
        (["--pipeline", "fold-batchnorm,no-such-pass"], "unknown pass 'no-such-pass'"),
        (["--emit", "lowered"], "--emit lowered is not a stage"),
        (["--weights", "missing.pt"], "weights file 'missing.pt' (--weights) does not exist"),
        (["-o", "no/such/folder/net.dpb"], "the folder 'no/such/folder' does not exist"),
    ],
)
def test_compile_checks_every_option_before_any_work(
    extra: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(load_module, "load_model", _no_import)
    assert main(["compile", "zoo:resnet8", "--calibration", "sample", *extra]) == 1
    assert message in capsys.readouterr().err


def test_an_override_naming_no_layer_fails_before_calibration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(driver, "calibrate", _no_import)
    args = ["compile", "zoo:lenet5", "--calibration", "sample", "--override", "conv9=w4"]
    assert main(args) == 1
    assert "override 'conv9=w4' names no conv or linear layer" in capsys.readouterr().err


def test_compiling_a_float_model_without_ranges_asks_for_calibration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["compile", "zoo:lenet5"]) == 1
    err = capsys.readouterr().err
    assert "without activation ranges; add --calibration sample" in err


def test_a_width_the_machine_lacks_is_a_printed_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["targets"]) == 0
    edge16 = capsys.readouterr().out.split("# edge16\n")[1].split("# ")[0]
    toml = edge16.replace('name = "edge16"', 'name = "edge8only"')
    toml = "\n".join(
        "weight_bits = [8]" if line.startswith("weight_bits") else line
        for line in toml.splitlines()
    )
    (tmp_path / "edge8only.toml").write_text(toml)
    args = ["compile", "zoo:lenet5", "--calibration", "sample", "--weight-bits", "4"]
    temp = Path(tempfile.gettempdir())
    assert main([*args, "--target", str(tmp_path / "edge8only.toml")]) == 0
    assert not list(temp.glob("dopant*"))  # a TOML target leaves nothing in the temp folder
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("dopant: warning:")]
    assert warnings == [
        "dopant: warning: 'edge8only' has no 4-bit weight lanes (it fuses to 8 bits): 4-bit "
        "weights run on its 8-bit lanes, with the same results and no speedup."
    ]


def test_compare_names_an_ir_that_is_not_the_binarys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bits in ("8", "4"):
        args = ["compile", "zoo:lenet5", "--calibration", "sample", "--weight-bits", bits]
        args += ["-o", str(tmp_path / f"w{bits}.dpb"), "--emit", "quantized"]
        assert main(args) == 0
        (tmp_path / f"w{bits}.mlir").write_text(capsys.readouterr().out)
    ok = ["compare", str(tmp_path / "w8.dpb"), "--ir", str(tmp_path / "w8.mlir"), "--images", "1"]
    assert main(ok) == 0
    capsys.readouterr()
    wrong = [*ok[:3], str(tmp_path / "w4.mlir"), "--images", "1"]
    assert main(wrong) == 1
    err = capsys.readouterr().err
    assert "w4.mlir' (--ir) is not the IR this binary was compiled from" in err
    assert "compiler or simulator bug" not in err


class _Terminal(io.StringIO):
    """Standard error as a terminal, where progress bars are drawn."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_a_compile_on_a_terminal_shows_its_stages_unless_quiet(
    tmp_path: Path, quiet: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    args = ["compile", "zoo:lenet5", "--calibration", "sample", "-o", str(tmp_path / "n.dpb")]
    assert main(["--quiet", *args] if quiet else args) == 0
    drawn = terminal.getvalue()
    assert ("compile:" in drawn and "stage" in drawn) is not quiet
    assert drawn.strip().endswith("bytes for 'edge16' (ws)")  # the bar leaves no line behind


def test_eval_warns_about_a_model_imported_untrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    float_ir, quantized = tmp_path / "mlp.mlir", tmp_path / "q.mlir"
    assert main(["import", "zoo:mlp", "-o", str(float_ir)]) == 0
    args = ["quantize", str(float_ir), "--calibration", "sample", "-o", str(quantized)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", str(quantized), "--limit", "50"]) == 0
    err = capsys.readouterr().err
    assert "q.mlir was imported with untrained weights (zoo:mlp, seeded initialization)" in err
    assert main(["quantize", str(float_ir), "-o", str(quantized)]) == 1  # no ranges, no data
    assert "carries no activation ranges; add --calibration sample" in capsys.readouterr().err


def test_a_model_imported_at_batch_4_compiles_and_runs_four_images_bit_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary, quantized = tmp_path / "b4.dpb", tmp_path / "b4.mlir"
    args = ["compile", "zoo:lenet5", "--input-shape", "4,1,28,28", "--calibration", "sample"]
    assert main([*args, "-o", str(binary), "--emit", "quantized"]) == 0
    quantized.write_text(capsys.readouterr().out)
    assert "tensor<4x1x28x28xf32>" in quantized.read_text()  # the IR keeps the user's batch
    # The simulator (one program, the batch as a loop) against the integer reference at batch 4.
    assert main(["compare", str(binary), "--ir", str(quantized), "--images", "4"]) == 0
    assert "bit-exact on every layer" in capsys.readouterr().out


def test_a_two_input_model_file_is_refused_naming_its_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "two.py").write_text(
        "import torch\n"
        "class Two(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 2, 3)\n"
        "    def forward(self, x, y, scale=1.0):\n"
        "        return self.conv(x) + scale * self.conv(y)\n"
        "def build():\n"
        "    return Two()\n"
    )
    args = ["import", f"{tmp_path / 'two.py'}:build", "--input-shape", "1,1,8,8"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "takes 2 inputs (x, y), but dopant's CLI traces a model on one input" in err
    assert "input shape" not in err.split("(--input-shape)")[0]  # not blamed on the shape


def test_run_refuses_an_output_in_a_missing_folder_before_simulating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dopant.runtime import loader

    monkeypatch.setattr(loader, "load", _no_import)  # no binary is read, nothing simulated
    args = ["run", str(tmp_path / "net.dpb"), "--input", "sample", "-o", "no/folder/out.npy"]
    assert main(args) == 1
    assert "the folder 'no/folder' does not exist" in capsys.readouterr().err
