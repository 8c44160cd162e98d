"""The `dopant` command line: commands, shell pipes, and one-line errors for bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dopant.compiler.calibrate import calibrate
from dopant.compiler.cli import main
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.pipeline import run_pipeline
from dopant.compiler.summary import op_counts
from dopant.dialects.qnn import Conv2DOp, LinearOp
from dopant.dialects.qnn.base import element
from dopant.support.errors import InputError

DOPANT = shutil.which("dopant") or str(Path(sys.executable).parent / "dopant")
XDSL_OPT = shutil.which("xdsl-opt") or str(Path(sys.executable).parent / "xdsl-opt")


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOPANT, *args], input=stdin, capture_output=True, text=True, timeout=300, check=False
    )


def test_opt_reads_the_imported_ir_from_a_pipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", "zoo:resnet8"]) == 0  # the IR on standard output, as in a pipe
    imported = capsys.readouterr().out
    out = tmp_path / "folded.mlir"
    opt = _run(
        "opt",
        "-",
        "-p",
        "fold-batchnorm,fuse-activation",
        "--time-passes",
        "-o",
        str(out),
        stdin=imported,
    )
    assert opt.returncode == 0, opt.stderr
    assert "fold-batchnorm" in opt.stderr and "total" in opt.stderr  # the timing table
    counts = op_counts(parse_ir(out.read_text()))
    # ResNet-8: 9 convs (7 + 2 shortcuts), all batch norms folded, all relus fused.
    assert counts["qnn.conv2d"] == 9
    assert counts["qnn.batch_norm"] == 0 and counts["qnn.relu"] == 0


def test_stock_xdsl_opt_finds_dopant_dialect_and_passes(tmp_path: Path) -> None:
    net = tmp_path / "net.mlir"
    assert main(["import", "zoo:lenet5", "-o", str(net)]) == 0
    result = subprocess.run(
        [XDSL_OPT, str(net), "-p", "fold-batchnorm,fuse-activation"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("act <relu>") == 4  # 2 convs + 2 hidden linear layers


def test_print_ir_after_all_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = tmp_path / "net.mlir"
    assert main(["import", "zoo:mlp", "-o", str(net)]) == 0
    assert (
        main(
            [
                "opt",
                str(net),
                "-p",
                "fuse-activation",
                "--print-ir-after-all",
                "-o",
                str(tmp_path / "o.mlir"),
            ]
        )
        == 0
    )
    assert "// -----// IR Dump After fuse-activation //----- //" in capsys.readouterr().err


def test_import_from_a_python_file_with_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "mynet.py"
    source.write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU())\n"
    )
    assert main(["import", f"{source}:build", "--input-shape", "1,2,6,6"]) == 0
    text = capsys.readouterr().out
    assert "tensor<1x2x6x6xf32>" in text and 'at "0"' in text


def test_passes_lists_options_and_summaries(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fold-batchnorm\n    Fold each `qnn.batch_norm` into the conv or linear layer" in out
    assert "    strict: bool = false" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["import", "zoo:resnet99"], "unknown zoo model 'resnet99'; available: mlp, lenet5"),
        (
            ["import", "nofile.py:build", "--input-shape", "1,3,8,8"],
            "model file 'nofile.py' does not exist",
        ),
        (
            ["import", "zoo:lenet5", "--input-shape", "1,1,8,8"],
            "torch could not run the model on input shape(s) [1, 1, 8, 8]",
        ),
        (["import", "zoo:lenet5", "--input-shape", "1,x,2"], "input shape '1,x,2' is not a list"),
        (["import", "zoo:lenet5", "--input-shape", "1,28,28"], "takes NCHW input"),
        (["opt", "missing.mlir"], "IR file 'missing.mlir' does not exist"),
        (["opt", "-", "-p", "fold-batchnorm,tile-everything"], "unknown pass 'tile-everything'"),
    ],
)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_bad_input_is_one_line_and_a_nonzero_exit(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 1
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if not line.startswith("dopant: warning: ")]
    assert len(errors) == 1 and errors[0].startswith("dopant: error: ")
    assert message in errors[0]


def test_factory_that_does_not_exist_names_what_the_file_defines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "nets.py"
    source.write_text("def small():\n    pass\ndef big():\n    pass\n")
    assert main(["import", f"{source}:tiny", "--input-shape", "1,3,8,8"]) == 1
    assert "has no callable 'tiny'; it defines: small, big" in capsys.readouterr().err


def test_malformed_mlir_names_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.mlir"
    bad.write_text(
        "func.func @forward(%x: tensor<2xf32>) {\n  %y = qnn.relu %x : tensor<2xf32>\n}\n"
    )
    assert main(["opt", str(bad), "-p", "fuse-activation"]) == 1
    assert f"dopant: error: {bad}:2:20: Expected 'at'" in capsys.readouterr().err


def test_debug_lets_the_error_through_to_pythons_traceback() -> None:
    # The console script then exits non-zero with Python's full traceback of this exception.
    with pytest.raises(InputError, match="unknown zoo model 'resnet99'"):
        main(["--debug", "import", "zoo:resnet99"])


def test_output_into_a_missing_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing_dir" / "net.mlir"
    assert main(["import", "zoo:mlp", "-o", str(target)]) == 1
    assert "the folder" in capsys.readouterr().err and not target.parent.exists()


def test_override_writes_the_bits_attributes_that_opt_quantizes_from_text(tmp_path: Path) -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32, 8),
        torch.nn.ReLU(), torch.nn.Linear(8, 3),
    )  # fmt: skip
    module = import_model(model.eval(), torch.randn(1, 1, 6, 6))
    run_pipeline(module, "fold-batchnorm,fuse-activation")
    calibrate(module, np.random.default_rng(0).standard_normal((16, 1, 6, 6)).astype(np.float32))
    net, marked = tmp_path / "net.mlir", tmp_path / "marked.mlir"
    net.write_text(ir_text(module))
    by_flag, by_text = tmp_path / "flag.mlir", tmp_path / "text.mlir"
    flags = ["--override", "3=w8a8", "--override", "5=a4"]
    assert main(["quantize", str(net), "--weight-bits", "4", *flags, "-o", str(by_flag)]) == 0
    assert main(["opt", str(net), "-p", 'set-bits{layers="3=w8a8,5=a4"}', "-o", str(marked)]) == 0
    assert "bits = #qnn.bits<w8a8>" in marked.read_text()
    assert "bits = #qnn.bits<a4>" in marked.read_text()
    assert main(["opt", str(marked), "-p", "quantize{weight-bits=4}", "-o", str(by_text)]) == 0
    assert by_flag.read_text() == by_text.read_text()
    # The widths, read off the types: layer 0 at the defaults, 3 and 5 as chosen.
    widths = {
        op.path.data: (str(element(op.weight)), str(element(op.input)))
        for op in parse_ir(by_text.read_text()).walk()
        if isinstance(op, Conv2DOp | LinearOp)
    }
    assert widths == {"0": ("si4", "si8"), "3": ("si8", "ui8"), "5": ("si4", "ui4")}
