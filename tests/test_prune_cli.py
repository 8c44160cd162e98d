"""`dopant groups` and `dopant prune` end to end, on a tiny model from a file, with the printed
totals checked against MACs counted by hand and parameters counted by torch on the same network
built at the pruned widths; one-line errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dopant.compiler.cli import main
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text, read_ir
from dopant.dialects.qnn import Conv2DOp, LinearOp
from dopant.dialects.qnn.base import shape
from dopant.passes._prune_channels.groups import coupling_groups
from dopant.passes._prune_channels.plan import PruningPlan
from dopant.passes.prune_channels import prune

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    """conv1 (stride 2: 14x14) + bn, a residual conv2 + bn, conv3 (stride 2: 7x7), mean, fc."""

    def __init__(self, c1: int = 4, c3: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c1, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c1)
        self.conv3 = nn.Conv2d(c1, c3, 3, stride=2, padding=1)
        self.fc = nn.Linear(c3, 10)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        b = torch.relu(self.bn2(self.conv2(a)) + a)
        return self.fc(torch.relu(self.conv3(b)).mean((2, 3)))


def build():
    torch.manual_seed(0)
    return Net()


def build_wide():
    return Net(8, 6)


def build_broad():
    """4097 hidden features on an input of 4: one more channel than sosp-i takes."""
    return nn.Sequential(nn.Linear(4, 4097), nn.ReLU(), nn.Linear(4097, 10))
'''


def hand_macs(k1: int, k3: int) -> int:
    """conv1 k1*1*9*14*14, conv2 k1*k1*9*14*14, conv3 k3*k1*9*7*7, fc 10*k3."""
    return k1 * 9 * 196 + k1 * k1 * 9 * 196 + k3 * k1 * 9 * 49 + 10 * k3


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The model file, its reference, the model itself and its imported IR on disk."""
    folder = tmp_path_factory.mktemp("prune-cli")
    (folder / "tiny_prune_net.py").write_text(NET)
    spec = importlib.util.spec_from_file_location("tiny_prune_net", folder / "tiny_prune_net.py")
    assert spec is not None and spec.loader is not None
    tiny_prune_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_prune_net)
    ir = folder / "net.mlir"
    ref = f"{folder / 'tiny_prune_net.py'}:build"
    assert main(["import", ref, "--input-shape", "1,1,28,28", "-o", str(ir)]) == 0
    return {"folder": folder, "ref": ref, "ir": ir, "module": tiny_prune_net}


def torch_params(module: object, k1: int, k3: int) -> int:
    model = module.Net(k1, k3)  # type: ignore[attr-defined]
    return sum(p.numel() for p in model.parameters())


def printed_totals(text: str) -> tuple[int, int, int, int]:
    """(MACs before, after, parameters before, after) from the table's last line."""
    found = re.search(r"MACs ([\d,]+) -> ([\d,]+) .*parameters ([\d,]+) -> ([\d,]+)", text)
    assert found, text
    a, b, c, d = (int(g.replace(",", "")) for g in found.groups())
    return a, b, c, d


def kept_widths(path: Path) -> tuple[int, int]:
    """(conv1 outputs, conv3 outputs) of a pruned IR file, and its shapes consistent."""
    ops = {
        op.path.data: op for op in read_ir(str(path)).walk() if isinstance(op, Conv2DOp | LinearOp)
    }
    k1, k3 = shape(ops["conv1"].weight)[0], shape(ops["conv3"].weight)[0]
    assert shape(ops["conv2"].weight)[:2] == (k1, k1)
    assert shape(ops["conv3"].weight)[1] == k1 and shape(ops["fc"].weight) == (10, k3)
    return k1, k3


def test_groups_lists_the_coupling_groups(
    net: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["groups", str(net["ir"])]) == 0
    from_ir = capsys.readouterr().out
    assert main(["groups", str(net["ref"]), "--input-shape", "1,1,28,28"]) == 0
    assert capsys.readouterr().out == from_ir
    rows = {line.split()[0]: line for line in from_ir.splitlines()[2:-1]}
    assert list(rows) == ["input", "conv1", "conv3", "fc"]
    # One channel of conv1's group: MACs(4, 6) - MACs(3, 6); params by torch.
    per_channel = hand_macs(4, 6) - hand_macs(3, 6)
    params = torch_params(net["module"], 4, 6) - torch_params(net["module"], 3, 6)
    assert re.search(
        rf"conv1\s+4\s+yes\s+{per_channel:,}\s+{params:,}\s+conv1 out@0, bn1", rows["conv1"]
    )
    assert "(+2 more)" in rows["conv1"]  # 6 members, 4 shown
    assert re.search(r"conv3\s+6\s+yes", rows["conv3"])
    assert "no: the network's outputs (logits)" in rows["fc"]
    assert from_ir.splitlines()[-1] == "4 groups, 2 prunable with 10 channels in all"


def test_prune_with_a_plan_from_the_model_or_its_ir(
    net: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = read_ir(str(net["ir"]))
    plan = PruningPlan.make(coupling_groups(module), {"conv1": [0, 2, 3], "conv3": [1, 4]})
    plan.save(str(tmp_path / "plan.json"))
    out_ir, out_model = tmp_path / "from-ir.mlir", tmp_path / "from-model.mlir"
    args = ["--plan", str(tmp_path / "plan.json")]
    assert (
        main(
            [
                "prune",
                str(net["ir"]),
                *args,
                "-o",
                str(out_ir),
                "--plan-out",
                str(tmp_path / "again.json"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    shape_args = ["--input-shape", "1,1,28,28"]
    assert main(["prune", str(net["ref"]), *shape_args, *args, "-o", str(out_model)]) == 0
    assert capsys.readouterr().out == table
    assert printed_totals(table) == (
        hand_macs(4, 6),
        hand_macs(3, 2),
        torch_params(net["module"], 4, 6),
        torch_params(net["module"], 3, 2),
    )
    assert re.search(r"conv2\s+conv2d\s+4->3\s+4->3", table)
    assert kept_widths(out_ir) == (3, 2)
    prune(module, plan)  # the pass itself, from Python
    assert out_ir.read_text() == out_model.read_text() == ir_text(module)
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(plan.to_json())


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("magnitude", ["--round-to", "2"]),
        ("sosp-h", ["--calibration", "sample", "--batches", "1", "--batch-size", "16"]),
    ],
)
def test_prune_by_saliency_meets_the_target(
    net: dict[str, object],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    extra: list[str],
) -> None:
    out, plan_out = tmp_path / "pruned.mlir", tmp_path / "plan.json"
    argv = ["prune", str(net["ref"]), "--input-shape", "1,1,28,28", "--method", method]
    argv += ["--target", "macs=0.4", *extra, "-o", str(out), "--plan-out", str(plan_out)]
    assert main(argv) == 0
    k1, k3 = kept_widths(out)
    assert 1 - hand_macs(k1, k3) / hand_macs(4, 6) >= 0.4
    if "--round-to" in extra:
        assert k1 % 2 == 0 and k3 % 2 == 0
    assert printed_totals(capsys.readouterr().out) == (
        hand_macs(4, 6),
        hand_macs(k1, k3),
        torch_params(net["module"], 4, 6),
        torch_params(net["module"], k1, k3),
    )
    module = read_ir(str(net["ir"]))
    plan = PruningPlan.load(str(plan_out))
    prune(module, plan)
    assert out.read_text() == ir_text(module)


def test_passes_lists_prune_channels(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    assert re.search(r"^prune-channels\b", capsys.readouterr().out, re.MULTILINE)


def test_import_codesign_is_cheap_and_exports_resolve() -> None:
    code = (
        "import sys, dopant.codesign as c\n"
        "assert 'torch' not in sys.modules and 'xdsl' not in sys.modules\n"
        "from dopant.codesign import PruningPlan, model_groups, prune, prune_module, saliency\n"
        "assert all(callable(f) for f in (PruningPlan, model_groups, prune, prune_module, saliency))\n"
        "assert not any(type(f).__name__ == 'module' for f in (prune, prune_module, saliency))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dopant") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "magnitude", "--target", "macs=1.5"], r"outside \(0, 1\)"),
        (["--method", "magnitude", "--target", "macs=0"], r"outside \(0, 1\)"),
        (["--method", "sosp-h", "--target", "macs=0.5"], "needs labelled data"),
        (["--method", "magnitude"], "say how much to prune"),
        (["--method", "magnitude", "--target", "macs=0.5", "--round-to", "0"], "--round-to must"),
        (["--plan", "plan.json", "--target", "macs=0.5"], "--target goes with --method"),
        # Given at their defaults, still refused: --plan would ignore them.
        (["--plan", "plan.json", "--round-to", "1"], "--round-to goes with --method"),
        (["--plan", "plan.json", "--hessian", "exact"], "--hessian goes with --method"),
        (["--plan", "plan.json", "--calibration", "sample"], "--calibration goes with --method"),
        (["--plan", "plan.json", "--batches", "0"], "--batches goes with --method"),
        (["--plan", "plan.json", "--batch-size", "64"], "--batch-size goes with --method"),
        (["--plan", "plan.json", "--mean", "0.5"], "--mean goes with --method"),
        (
            ["--plan", "plan.json", "--hessian", "gauss-newton", "--batches", "2", "--std", "1"],
            r"^dopant: error: --hessian, --batches and --std go with --method \(a saliency "
            r"prune\), not with --plan, which already says which channels to keep\.$",
        ),
        (
            ["--target", "macs=0.5", "-o", "no/such/folder/p.mlir"],
            "folder 'no/such/folder' does not exist",
        ),
    ],
)
def test_bad_options_fail_in_one_line_before_work(
    net: dict[str, object], capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    err = _error(["prune", str(net["ref"]), "--input-shape", "1,1,28,28", *options], capsys)
    assert re.search(message, err, re.MULTILINE), err


def test_a_target_that_would_empty_a_group(
    net: dict[str, object], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    reach = 1 - hand_macs(1, 1) / hand_macs(4, 6)  # every group down to one channel
    argv = ["prune", str(net["ref"]), "--input-shape", "1,1,28,28", "--method", "magnitude"]
    err = _error([*argv, "--target", "macs=0.99"], capsys)
    floor = np.floor(reach * 1000) / 1000
    assert f"at most {floor:.1%}" in err and f"macs={floor:g}" in err, err
    # Said before the data is read: images without labels would fail to load for saliency.
    np.save(tmp_path / "images.npy", np.zeros((4, 1, 28, 28), np.float32))
    argv[-1] = "sosp-h"
    err = _error(
        [*argv, "--target", "macs=0.99", "--calibration", str(tmp_path / "images.npy")], capsys
    )
    assert "would empty a group: with every prunable group down to one channel" in err, err


def test_sosp_i_over_too_many_channels_fails_before_the_data_is_read(
    net: dict[str, object], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 4), np.float32))  # no labels: would fail to load
    ref = str(net["ref"]).replace(":build", ":build_broad")
    argv = ["prune", ref, "--input-shape", "1,4", "--method", "sosp-i", "--target", "macs=0.5"]
    err = _error([*argv, "--calibration", str(tmp_path / "x.npy")], capsys)
    # 2 * 4097**2 float64 = 268566544 bytes = 256.1 MiB.
    assert (
        "--method sosp-i keeps an S×S matrix over the S = 4097 prunable channels of this "
        "network, about 256 MiB (it takes at most 4096 channels); use --method sosp-h." in err
    ), err


def test_a_plan_for_another_network(
    net: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wide = import_model(net["module"].build_wide().eval(), torch.randn(1, 1, 28, 28))  # type: ignore[attr-defined]
    PruningPlan.make(coupling_groups(wide), {"conv1": [0, 1]}).save(str(tmp_path / "wide.json"))
    out = tmp_path / "out.mlir"
    err = _error(
        ["prune", str(net["ir"]), "--plan", str(tmp_path / "wide.json"), "-o", str(out)], capsys
    )
    assert "has 8 channels but this network's has 4" in err
    assert not out.exists()


def test_method_and_plan_together_and_saliency_on_ir(
    net: dict[str, object], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, in one line
        main(["prune", str(net["ir"]), "--plan", "p.json", "--method", "taylor"])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert "not allowed with argument --plan" in err and err.count("\n") == 1
    err = _error(["prune", str(net["ir"]), "--method", "taylor", "--target", "macs=0.5"], capsys)
    assert "saliency is computed on the torch model" in err
    np.save(tmp_path / "images.npy", np.zeros((4, 1, 28, 28), np.float32))
    argv = ["prune", str(net["ref"]), "--input-shape", "1,1,28,28", "--method", "taylor"]
    err = _error(
        [*argv, "--target", "macs=0.5", "--calibration", str(tmp_path / "images.npy")], capsys
    )
    assert "has no labels, and saliency needs them" in err
