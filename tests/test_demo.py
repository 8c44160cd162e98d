"""The main job end to end on the shipped LeNet-5 and test sample."""

from __future__ import annotations

import pytest

from dopant.codesign.demo import demo
from dopant.compiler.cli import main


def test_demo_reports_float_and_quantized_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    results = demo("zoo:lenet5")
    out = capsys.readouterr().out
    assert "max error against torch" in out and "W8A8" in out
    # The shipped LeNet-5 scores 91.4% on the 1000-image sample (measured when it was trained).
    assert results["float"] == pytest.approx(0.914, abs=0.001)
    assert abs(results["W8A8"] - results["float"]) <= 0.01
    assert results["W4A8"] >= results["float"] - 0.03
    # The binary on the simulator computes exactly what the integer reference computes.
    assert results["W8A8 on the accelerator"] == results["W8A8"]
    assert "bit-identical to the integer reference on 1000 of 1000 images" in out
    assert "accelerator 'edge16'" in out and "features.0" in out  # the profile, per layer
    # The co-designed network: measured within 2% under half the dense cycles, the binary
    # still bit-exact; a brief fine-tune and QAT keep it far above chance (10%).
    assert 0.98 * 0.5 * results["cycles"] <= results["pruned cycles"] <= 0.5 * results["cycles"]
    assert out.count("bit-identical to the integer reference on 1000 of 1000 images") == 2
    assert results["pruned float"] > 0.5 and results["co-designed on the accelerator"] > 0.5
    assert "round 1: selector budget" in out
    assert f"{int(results['pruned cycles']):,}" in out.split("speed-up")[-1]


def test_demo_refuses_models_without_trained_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", "zoo:vgg_small"]) == 1
    assert "the demo runs a trained model: zoo:lenet5 or zoo:resnet8" in capsys.readouterr().err
