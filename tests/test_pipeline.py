"""Pass machinery and the first passes, checked on .mlir text: what each pass changes."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from dopant.compiler.cli import main
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.pipeline import available_passes, parse, run_pipeline
from dopant.dialects.qnn import BatchNormOp, ClampOp, ConstantOp, Conv2DOp, LinearOp, ReluOp
from dopant.support.errors import IRError, PipelineError

CONV_BN_RELU = """
func.func @forward(%x: tensor<1x1x2x2xf32>) -> tensor<1x2x2x2xf32> {
  %w = qnn.constant dense<1.0> : tensor<2x1x1x1xf32> at "conv.weight"
  %b = qnn.constant dense<[0.5, -1.0]> : tensor<2xf32> at "conv.bias"
  %gamma = qnn.constant dense<[2.0, 1.0]> : tensor<2xf32> at "bn.weight"
  %beta = qnn.constant dense<[0.0, 3.0]> : tensor<2xf32> at "bn.bias"
  %mean = qnn.constant dense<[1.0, 0.0]> : tensor<2xf32> at "bn.running_mean"
  %var = qnn.constant dense<[3.0, 3.0]> : tensor<2xf32> at "bn.running_var"
  %c = qnn.conv2d %x, %w, %b stride [1, 1] pad [0, 0, 0, 0] dilation [1, 1] groups 1 at "conv" : (tensor<1x1x2x2xf32>, tensor<2x1x1x1xf32>, tensor<2xf32>) -> tensor<1x2x2x2xf32>
  %n = qnn.batch_norm %c, %gamma, %beta, %mean, %var eps 1.0 at "bn" : (tensor<1x2x2x2xf32>, tensor<2xf32>, tensor<2xf32>, tensor<2xf32>, tensor<2xf32>) -> tensor<1x2x2x2xf32>
  %r = qnn.relu %n at "relu" : tensor<1x2x2x2xf32>
  func.return %r : tensor<1x2x2x2xf32>
}
"""


def _only(module: object, kind: type) -> object:
    (op,) = [o for o in module.walk() if isinstance(o, kind)]  # type: ignore[attr-defined]
    return op


def test_fold_batchnorm_rescales_weight_and_bias() -> None:
    module = parse_ir(CONV_BN_RELU)
    run_pipeline(module, "fold-batchnorm")
    assert not [o for o in module.walk() if isinstance(o, BatchNormOp)]
    conv = _only(module, Conv2DOp)
    # a = gamma / sqrt(var + eps) = [2/2, 1/2] = [1, 0.5]
    # W' = W * a = [1, 0.5];  b' = (b - mean) * a + beta = [(0.5-1)*1 + 0, (-1-0)*0.5 + 3]
    assert conv.weight.owner.numpy().ravel().tolist() == [1.0, 0.5]
    assert conv.bias.owner.numpy().tolist() == [-0.5, 2.5]
    assert conv.weight.owner.path.data == "conv.weight"
    # The relu still reads the conv; the folded statistics are gone.
    assert _only(module, ReluOp).input is conv.output
    assert len([o for o in module.walk() if isinstance(o, ConstantOp)]) == 2


def test_fold_batchnorm_adds_a_bias_to_a_conv_without_one() -> None:
    text = CONV_BN_RELU.replace("%x, %w, %b stride", "%x, %w stride").replace(
        "(tensor<1x1x2x2xf32>, tensor<2x1x1x1xf32>, tensor<2xf32>)",
        "(tensor<1x1x2x2xf32>, tensor<2x1x1x1xf32>)",
    )
    module = parse_ir(text)
    run_pipeline(module, "fold-batchnorm")
    conv = _only(module, Conv2DOp)
    # b' = (0 - mean) * a + beta = [-1, 3]
    assert conv.bias.owner.numpy().tolist() == [-1.0, 3.0]
    assert conv.bias.owner.path.data == "conv.bias"


def test_fold_batchnorm_leaves_a_norm_whose_conv_has_other_users() -> None:
    text = CONV_BN_RELU.replace(
        "func.return %r : tensor<1x2x2x2xf32>",
        '%s = qnn.add %r, %c at "add" : (tensor<1x2x2x2xf32>, tensor<1x2x2x2xf32>) -> '
        "tensor<1x2x2x2xf32>\n  func.return %s : tensor<1x2x2x2xf32>",
    )
    module = parse_ir(text)
    run_pipeline(module, "fold-batchnorm")
    assert _only(module, BatchNormOp) is not None
    with pytest.raises(
        PipelineError,
        match=r"pass 'fold-batchnorm' failed: 1 batch norm\(s\) "
        r'could not be folded: "bn"',
    ):
        run_pipeline(parse_ir(text), "fold-batchnorm{strict=true}")


def test_fuse_activation_records_relu_and_relu6_on_the_producer() -> None:
    module = parse_ir(CONV_BN_RELU)
    run_pipeline(module, "fold-batchnorm,fuse-activation")
    conv = _only(module, Conv2DOp)
    assert str(conv.act) == "#qnn.act<relu>"
    assert not [o for o in module.walk() if isinstance(o, ReluOp)]
    assert 'act <relu> at "conv"' in ir_text(module)

    clamp = CONV_BN_RELU.replace('qnn.relu %n at "relu"', 'qnn.clamp %n min 0.0 max 6.0 at "relu6"')
    module = parse_ir(clamp)
    run_pipeline(module, "fuse-activation")
    # The relu6 follows the batch norm, not the conv, so nothing fuses before folding...
    assert _only(module, ClampOp) is not None
    run_pipeline(module, "fold-batchnorm,fuse-activation")
    assert str(_only(module, Conv2DOp).act) == "#qnn.act<clamp 0.0, 6.0>"


def test_a_bit_plan_written_before_folding_stays_on_the_layer() -> None:
    module = parse_ir(CONV_BN_RELU)
    before = _only(module, Conv2DOp)
    run_pipeline(
        module,
        'set-bits{layers="conv=w4"},fold-batchnorm,fuse-activation,set-bits{layers="conv=a2"}',
    )
    conv = _only(module, Conv2DOp)
    # Folding and fusing rebuilt the conv; its widths went along, and a later set-bits adds
    # the activation width to the weight width already chosen.
    assert conv is not before and str(conv.act) == "#qnn.act<relu>"
    assert 'act <relu> at "conv" {bits = #qnn.bits<w4a2>} :' in ir_text(module)


def test_fuse_activation_skips_a_producer_with_other_users() -> None:
    text = """
func.func @forward(%x: tensor<2x4xf32>) -> (tensor<2x3xf32>, tensor<2x3xf32>) {
  %w = qnn.constant dense<1.0> : tensor<3x4xf32>
  %y = qnn.linear %x, %w at "fc" : (tensor<2x4xf32>, tensor<3x4xf32>) -> tensor<2x3xf32>
  %r = qnn.relu %y at "relu" : tensor<2x3xf32>
  func.return %r, %y : tensor<2x3xf32>, tensor<2x3xf32>
}"""
    module = parse_ir(text)
    run_pipeline(module, "fuse-activation")
    assert _only(module, LinearOp).act is None and _only(module, ReluOp) is not None


def test_pipeline_dumps_ir_after_named_passes_and_times_each_pass() -> None:
    module = parse_ir(CONV_BN_RELU)
    dump = io.StringIO()
    report = run_pipeline(
        module, "fold-batchnorm,fuse-activation", print_ir_after=["fuse-activation"], dump=dump
    )
    text = dump.getvalue()
    assert text.count("// -----// IR Dump After") == 1
    assert "IR Dump After fuse-activation" in text and 'act <relu> at "conv"' in text
    assert [name for name, _ in report.timings] == ["fold-batchnorm", "fuse-activation"]
    assert all(seconds >= 0 for _, seconds in report.timings)
    assert "fold-batchnorm" in report.table() and "total" in report.table()

    dump = io.StringIO()
    run_pipeline(
        parse_ir(CONV_BN_RELU), "fold-batchnorm,fuse-activation", print_ir_after_all=True, dump=dump
    )
    assert dump.getvalue().count("// -----// IR Dump After") == 2


def test_named_dumps_go_to_standard_error_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    run_pipeline(parse_ir(CONV_BN_RELU), "fold-batchnorm", print_ir_after=["fold-batchnorm"])
    captured = capsys.readouterr()
    assert captured.err.startswith("// -----// IR Dump After fold-batchnorm //----- //\n")
    assert captured.out == ""


def test_opt_writes_the_dumps_to_a_file_and_nothing_to_standard_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.mlir").write_text(CONV_BN_RELU)
    args = ["opt", str(tmp_path / "in.mlir"), "-p", "fold-batchnorm,fuse-activation"]
    args += ["--print-ir-after-all", "--dump-to", str(tmp_path / "passes.mlir")]
    assert main([*args, "-o", str(tmp_path / "out.mlir")]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "passes.mlir").read_text().count("// -----// IR Dump After") == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "fold-batchnorm,nope",
            "unknown pass 'nope'; valid passes: fold-batchnorm, fuse-activation",
        ),
        (
            "fold-batchnorm{foo=1}",
            "pass 'fold-batchnorm' has no option 'foo'; its options are "
            "strict (bool, default false)",
        ),
        (
            "fold-batchnorm{strict=3}",
            "option 'strict' of pass 'fold-batchnorm' takes true or false, got 3",
        ),
        (
            "fold-batchnorm{strict=true,false}",
            "option 'strict' of pass 'fold-batchnorm' takes one bool value, got 2",
        ),
        ("fold-batchnorm{strict=true", "cannot parse pipeline 'fold-batchnorm{strict=true'"),
        ("fuse-activation{x=1}", "pass 'fuse-activation' has no option 'x'; it takes no options"),
    ],
)
def test_bad_pipelines_are_refused_before_any_pass_runs(spec: str, message: str) -> None:
    with pytest.raises(PipelineError) as error:
        parse(spec)
    assert message in str(error.value)


def test_verification_after_each_pass_names_the_pass_and_op() -> None:
    module = parse_ir(CONV_BN_RELU)
    conv = _only(module, Conv2DOp)
    conv.properties["groups"] = type(conv.groups)(2, conv.groups.type)  # break it

    class Nothing:
        name = "do-nothing"

        def apply(self, ctx: object, op: object) -> None:
            pass

    with pytest.raises(
        IRError,
        match=re.escape(
            "IR does not verify after pass 'do-nothing': "
            'qnn.conv2d at "conv": groups=2 must divide'
        ),
    ):
        run_pipeline(module, [Nothing()])  # type: ignore[list-item]


def test_registry_lists_one_class_per_name() -> None:
    passes = available_passes()
    assert {"fold-batchnorm", "fuse-activation"} <= set(passes)
    for name, factory in passes.items():
        assert factory().name == name


def test_options_round_trip_through_pipeline_text() -> None:
    (p,) = parse("fold-batchnorm{strict=true}")
    assert p.strict is True  # type: ignore[attr-defined]
    assert str(p) == "fold-batchnorm{strict=true}"
