"""The CLI's data options on a user's data: an image folder, uint8 and float arrays, labels,
normalization; `eval`'s warnings and `run` on a batch; errors that name the data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dopant.compiler.cli import main
from dopant.compiler.driver import compile_module
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text
from dopant.compiler.models.datasets import load_sample
from dopant.compiler.models.pretrained import load_pretrained
from dopant.runtime.loader import load

PER_CLASS = 8


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained LeNet-5 as .mlir, and the same 80 test images as a folder of PNGs in class
    subfolders, a float .npz and uint8 arrays; `labels.npy` and the torch accuracy beside."""
    root = tmp_path_factory.mktemp("user")
    _, test = load_sample()
    pick = np.concatenate([np.flatnonzero(test.y == c)[:PER_CLASS] for c in range(10)])
    pixels = np.round(test.x[pick, 0] * 255).astype(np.uint8)  # the shipped uint8 pixels
    labels = test.y[pick]
    for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        folder = root / "images" / f"{label}_class"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    x = pixels[:, None].astype(np.float32) / 255  # sorted by class already, as the folder
    np.savez(root / "float.npz", x=x, y=labels)
    np.save(root / "float.npy", x)
    np.save(root / "uint8.npy", pixels[:, None])
    model = load_pretrained("lenet5")
    (root / "net.mlir").write_text(ir_text(import_model(model, torch.from_numpy(x[:1]))))
    with torch.no_grad():
        hits = (model(torch.from_numpy(x)).argmax(dim=1).numpy() == labels).mean()
    (root / "torch_accuracy.txt").write_text(f"{hits:.2%}")
    return {name: root / name for name in ("images", "float.npz", "float.npy", "uint8.npy")} | {
        "net": root / "net.mlir",
        "torch": root / "torch_accuracy.txt",
        "root": root,
    }


def _accuracy(out: str) -> str:
    found = re.search(r"top-1 accuracy (\S+%) on (\d+) images", out)
    assert found, out
    return found.group(1)


def test_a_png_folder_calibrates_and_evaluates_as_the_float_npz(
    user: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = {}
    for name in ("images", "float.npz"):
        out = user["root"] / f"cal-{name}.mlir"
        assert (
            main(["calibrate", str(user["net"]), "--calibration", str(user[name]), "-o", str(out)])
            == 0
        )
        outputs[name] = out.read_text()
    assert outputs["images"] == outputs["float.npz"] and "minmax on 80 samples" in outputs["images"]
    capsys.readouterr()
    accuracies = []
    for name in ("images", "float.npz"):
        assert main(["eval", str(user["net"]), "--data", str(user[name])]) == 0
        captured = capsys.readouterr()
        accuracies.append(_accuracy(captured.out))
        assert "on 80 images" in captured.out and "warning" not in captured.err
    assert accuracies == [user["torch"].read_text()] * 2  # torch on the same float images


def test_uint8_arrays_are_scaled_like_the_float_version(
    user: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for name in ("uint8.npy", "float.npy"):
        out = user["root"] / f"cal-{name}.mlir"
        assert (
            main(["quantize", str(user["net"]), "--calibration", str(user[name]), "-o", str(out)])
            == 0
        )
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]


def test_eval_warns_at_chance_level(
    user: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with np.load(user["float.npz"]) as data:
        x, y = data["x"], data["y"]
    shifted = user["root"] / "shifted.npz"
    np.savez(shifted, x=x, y=(y + 1) % 10)  # labels in another order than the model's classes
    assert main(["eval", str(user["net"]), "--data", str(shifted)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "no better than chance for 10 classes" in err
    assert "--mean and --std" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "{net}", "--data", "{uint8}"], "'.*uint8.npy' has no labels, so accuracy"),
        (
            ["calibrate", "{net}", "--calibration", "{bad}"],
            r"'.*bad.npy' has shape \[5, 3, 37, 41\], but the model takes samples of shape "
            r"\[1, 28, 28\]; give an array of shape \[N, 1, 28, 28\]",
        ),
        (
            ["eval", "{net}", "--data", "{nokey}"],
            r"'.*nokey.npz' has no key 'x' \(it has: images\)",
        ),
        (
            ["calibrate", "{two}", "--calibration", "sample"],
            r"the model takes 2 inputs \(x, y\); dopant's data options feed one input — ",
        ),
        (["eval", "{net}", "--data", "{missing}"], r"'.*missing' does not exist; give 'sample'"),
    ],
)
def test_bad_data_is_one_line_naming_the_file(
    user: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    root = user["root"]
    np.save(root / "bad.npy", np.zeros((5, 3, 37, 41), np.float32))
    np.savez(root / "nokey.npz", images=np.zeros((2, 1, 28, 28)))
    two = "func.func @forward(%x: tensor<1x2xf32>, %y: tensor<1x2xf32>) -> tensor<1x2xf32> {\n"
    two += (
        '  %a = qnn.add %x, %y at "add" : (tensor<1x2xf32>, tensor<1x2xf32>) -> tensor<1x2xf32>\n'
    )
    (root / "two.mlir").write_text(two + "  func.return %a : tensor<1x2xf32>\n}\n")
    paths = {**{k: str(v) for k, v in user.items()}, "two": str(root / "two.mlir")}
    paths |= {"uint8": str(user["uint8.npy"]), "bad": str(root / "bad.npy")}
    paths |= {"nokey": str(root / "nokey.npz"), "missing": str(root / "missing")}
    assert main([a.format(**paths) for a in args]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.count("\n") == 1 and "256" not in err


def test_run_writes_the_batch_outputs_equal_to_one_image_at_a_time(
    user: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = user["root"]
    from dopant.compiler.irio import read_ir

    x = np.load(user["float.npy"])[::PER_CLASS][:4]  # one image of classes 0..3
    compiled = compile_module(read_ir(user["net"]), target="edge16", calibration=x)
    compiled.save(root / "net.dpb")
    program = load(root / "net.dpb")
    want = np.concatenate([program.run(x[i : i + 1]).outputs[0] for i in range(len(x))])
    np.save(root / "four.npy", np.round(x * 255).astype(np.uint8))  # uint8: scaled by 1/255
    names = root / "names.txt"
    names.write_text("".join(f"name{c}\n" for c in range(10)))
    args = ["run", str(root / "net.dpb"), "--input", str(root / "four.npy"), "--top-k", "2"]
    assert main([*args, "--classes", str(names), "-o", str(root / "out.npy")]) == 0
    np.testing.assert_array_equal(np.load(root / "out.npy"), want)
    out = capsys.readouterr().out
    best = want.argmax(axis=1)
    assert f"sample 3: {best[3]} name{best[3]} (" in out
    assert main([*args, "-o", str(root / "out.npz")]) == 0
    with np.load(root / "out.npz") as saved:
        np.testing.assert_array_equal(saved[program.outputs[0].name], want)
    capsys.readouterr()
    assert main(["run", str(root / "net.dpb"), "--input", str(user["images"]), "--limit", "3"]) == 0
    out = capsys.readouterr().out  # a folder: labels from its class folders, names as well
    assert "[label 0 0_class]" in out and "top-1 accuracy" in out and "on 3 samples" in out
    assert "3 samples, one after another" in out
