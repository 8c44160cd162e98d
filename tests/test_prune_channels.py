"""The `prune-channels` pass: from a plan file and from the module attribute (the same IR), plans
through JSON and IR text, channels whose effect is zero removed without changing the outputs,
pruned quantized networks bit-exact on the simulator, and the errors of a plan that does not
fit or is malformed (each naming its place in the JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.driver import compile_module, quantize_network
from dopant.compiler.frontend import import_model
from dopant.compiler.irio import ir_text, parse_ir
from dopant.compiler.pipeline import run_pipeline
from dopant.dialects.qnn import ConstantOp
from dopant.passes._prune_channels.groups import Group, coupling_groups
from dopant.passes._prune_channels.plan import PLAN_ATTR, PruningPlan
from dopant.passes.prune_channels import PRUNED_ATTR, prune
from dopant.runtime import reference
from dopant.support.errors import InputError, PipelineError

ZooIR = Callable[..., ModuleOp]


class Branchy(nn.Module):
    """A grouped conv (2 groups of 2 inputs, 3 outputs), a depthwise conv with multiplier 2,
    a concat with a second branch, a flatten into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.g = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(6, 12, 3, padding=1, groups=6)
        self.b = nn.Conv2d(1, 3, 1)
        self.c = nn.Conv2d(15, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 7)
        self.out = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.dw(torch.relu(self.g(torch.relu(self.a(x))))))
        y = torch.cat([y, torch.relu(self.b(x))], 1)
        y = torch.relu(self.c(y))
        return self.out(torch.relu(self.fc(torch.flatten(y, 1))))


def _branchy() -> tuple[Branchy, torch.Tensor]:
    torch.manual_seed(0)
    return Branchy().eval(), torch.randn(1, 1, 4, 4)


# Group -> channels of that group to remove (indices of the group, not of a layer).
REMOVED = {"a": [1], "g": [2], "b": [0], "c": [4], "fc": [3]}


def _keep(groups: dict[str, int]) -> dict[str, list[int]]:
    return {gid: [i for i in range(groups[gid]) if i not in gone] for gid, gone in REMOVED.items()}


def test_channels_with_zero_effect_go_and_the_outputs_stay() -> None:
    net, x = _branchy()
    groups = coupling_groups(import_model(net, x))
    by_id = {g.id: g for g in groups}
    # Zero each removed channel's filters and bias in torch, in every output it spans: a's
    # channel 1 is a's outputs 1 and 3 (one per group of g), g's channel 2 is g's outputs 2 and
    # 5 and the depthwise outputs 4, 5, 10, 11 they feed.
    with torch.no_grad():
        for gid, gone in REMOVED.items():
            for member in by_id[gid].members:
                if member.dim != "out":
                    continue
                layer = getattr(net, member.path)
                for index in member.channels[gone].ravel():
                    layer.weight[index] = 0.0
                    layer.bias[index] = 0.0
    module = import_model(net, x)
    plan = PruningPlan.make(groups, _keep({g.id: g.size for g in groups}))
    prune(module, plan)
    module.verify()
    weights = {op.path.data: op.numpy().shape for op in module.walk() if isinstance(op, ConstantOp)}
    # a: 4 -> 2 outputs; g: 2 of each group's 2 inputs... 1 per group, 3 -> 2 outputs per group;
    # dw: 4 groups of 2 outputs; c reads 8 + 2 channels; fc reads 4 channels of 16 pixels.
    assert weights["a.weight"] == (2, 1, 3, 3)
    assert weights["g.weight"] == (4, 1, 3, 3)
    assert weights["dw.weight"] == (8, 1, 3, 3)
    assert weights["c.weight"] == (4, 10, 1, 1)
    assert weights["fc.weight"] == (6, 64)
    assert weights["out.weight"] == (2, 6)
    (got,) = reference.run(module, x.numpy())
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def _zoo_plan(module: ModuleOp) -> PruningPlan:
    """Every prunable group keeps the channels i with i % 3 != 1 (a third removed)."""
    groups = coupling_groups(module)
    return PruningPlan.make(
        groups, {g.id: [i for i in range(g.size) if i % 3 != 1] for g in groups if g.prunable}
    )


def _plan_text(plan: PruningPlan) -> str:
    """The plan as the module attribute, written out by hand (ids quoted: they hold dots)."""
    entries = ", ".join(
        f'"{g.id}" = array<i64: {", ".join(map(str, g.keep))}>' for g in plan.groups
    )
    return f"{PLAN_ATTR} = {{{entries}}}"


def test_the_plan_file_and_the_module_attribute_give_the_same_ir(
    zoo_ir: ZooIR, tmp_path: Path
) -> None:
    module = zoo_ir("resnet8")
    plan = _zoo_plan(module)
    path = tmp_path / "plan.json"
    plan.save(str(path))
    text = ir_text(module)
    assert text.startswith("builtin.module {")
    annotated = parse_ir(
        text.replace("builtin.module {", f"builtin.module attributes {{{_plan_text(plan)}}} {{", 1)
    )
    run_pipeline(annotated, "prune-channels")
    run_pipeline(module, f'prune-channels{{plan="{path}"}}')
    assert ir_text(module) == ir_text(annotated)
    assert PLAN_ATTR not in annotated.attributes
    # conv1's group had 16 channels: 0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15 stay (11).
    weights = {op.path.data: op.numpy().shape for op in module.walk() if isinstance(op, ConstantOp)}
    assert weights["conv1.weight"] == (11, 1, 3, 3)
    assert weights["layer1.0.conv1.weight"] == (11, 11, 3, 3)
    assert weights["fc.weight"] == (10, 43)  # 64 channels -> 43
    # i % 3 == 1 goes: 5 of 16 (1, 4, .., 13), 11 of 32 (.., 31), 21 of 64 (.., 61); two
    # groups of each width.
    removed = 2 * (5 + 11 + 21)
    assert str(module.attributes[PRUNED_ATTR]) == f'"{removed} channel(s) removed from 6 group(s)"'
    # Run again with the same plan: the groups are narrower now.
    with pytest.raises(PipelineError, match=r"plan.json's group 'conv1' has 16 channels but this"):
        run_pipeline(module, f'prune-channels{{plan="{path}"}}')


def _same_plans(a: PruningPlan, b: PruningPlan) -> bool:
    def fields(plan: PruningPlan) -> list[object]:
        return [
            (g.id, g.size, g.keep, [(m.path, m.op, m.dim, m.channels.tolist()) for m in g.members])
            for g in plan.groups
        ]

    return fields(a) == fields(b)


def test_plans_round_trip_through_json() -> None:
    net, x = _branchy()
    groups = coupling_groups(import_model(net, x))
    plan = PruningPlan.make(groups, _keep({g.id: g.size for g in groups}))
    text = plan.to_json()
    again = PruningPlan.from_json(text)
    assert _same_plans(plan, again) and again.to_json() == text
    members = {(m["path"], m["dim"]): m for m in json.loads(text)["groups"]["g"]["members"]}
    # g's outputs: channel j of the group is outputs j and j + 3, affine with spacing 3.
    assert members["g", "out"] == {
        "path": "g",
        "op": "conv2d",
        "dim": "out",
        "offset": 0,
        "per_channel": 2,
        "stride": 1,
        "spacing": 3,
    }
    # The depthwise outputs of g's channel j are 2j, 2j + 1, 2j + 6, 2j + 7: not affine, so
    # the indices are spelled out.
    assert members["dw", "out"]["channels"] == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    b = json.loads(text)["groups"]["b"]["members"]
    assert [(m["path"], m["dim"], m["offset"]) for m in b] == [("b", "out", 0), ("c", "in", 12)]


def test_plans_round_trip_through_ir_text(zoo_ir: ZooIR) -> None:
    module = zoo_ir("resnet8")
    plan = _zoo_plan(module)
    module.attributes[PLAN_ATTR] = plan.to_attr()
    parsed = parse_ir(ir_text(module))
    again = PruningPlan.from_attr(parsed.attributes[PLAN_ATTR], coupling_groups(parsed))  # type: ignore[arg-type]
    assert _same_plans(plan, again)


@pytest.mark.parametrize(("name", "shape"), [("resnet8", None), ("mobilenetv2", (1, 3, 8, 8))])
def test_a_pruned_quantized_network_is_bit_exact_on_every_preset(
    name: str, shape: tuple[int, ...] | None, zoo_ir: ZooIR
) -> None:
    module = zoo_ir(name, shape)
    images = (
        np.random.default_rng(1)
        .standard_normal((4, *(shape or (1, 1, 28, 28))[1:]))
        .astype(np.float32)
    )
    plan = _zoo_plan(module)
    quantized_first = quantize_network(module, images)
    prune(quantized_first, plan)
    pruned_first = module.clone()
    prune(pruned_first, plan)
    for quantized in (quantized_first, quantize_network(pruned_first, images)):
        quantized.verify()
        want = reference.run(quantized, images[:1])[0]
        for preset in ("small8", "edge16", "large32"):
            compiled = compile_module(quantized, target=preset)
            assert np.array_equal(compiled.run(images[:1]).outputs[0], want), preset


def _branchy_ir() -> tuple[ModuleOp, list[Group]]:
    net, x = _branchy()
    module = import_model(net, x)
    return module, coupling_groups(module)


def _plan_json(groups: list[Group]) -> dict[str, Any]:
    return json.loads(PruningPlan.make(groups, {"c": [0, 2]}).to_json())


def _run_with(module: ModuleOp, plan: object, tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(plan if isinstance(plan, str) else json.dumps(plan, indent=1))
    run_pipeline(module, f'prune-channels{{plan="{path}"}}')


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["groups"].update({"layer9": p["groups"].pop("c")}),
            r"names group 'layer9', which this network does not have \(its prunable groups: "
            r"a, g, b, c, fc\); was the plan made for another network\?",
        ),
        (
            lambda p: p["groups"]["c"]["members"][1].update(path="head"),
            r"group 'c' does not list 'fc' \(in\), a member of this network's group",
        ),
        (
            lambda p: p["groups"]["c"]["members"][1].update(per_channel=8),
            r"group 'c' maps the channels of 'fc' \(in\) differently from this network",
        ),
        (
            lambda p: p["groups"]["c"].update(keep=[0, 5]),
            r"group 'c' keeps channel 5, but the group has 5 channels \(0..4\)",
        ),
        (
            lambda p: p["groups"]["c"].update(keep=[1, 1]),
            r"group 'c' keeps channel 1 twice",
        ),
        (
            lambda p: p["groups"]["c"].update(keep=[]),
            r"group 'c' keeps no channel; every group must keep at least one",
        ),
        (
            lambda p: p.update(format="onnx"),
            r'is not a pruning plan: expected a JSON object with "format": "dopant-pruning-plan"',
        ),
        (
            lambda p: p.update(version=2),
            r"is a version 2 plan; this dopant reads version 1",
        ),
    ],
)
def test_a_plan_that_does_not_fit_names_the_fault(
    edit: Callable[[dict[str, Any]], None], message: str, tmp_path: Path
) -> None:
    module, groups = _branchy_ir()
    plan = _plan_json(groups)
    edit(plan)
    with pytest.raises(PipelineError, match=message):
        _run_with(module, plan, tmp_path)


def test_touching_a_group_that_cannot_be_pruned_is_an_error(tmp_path: Path) -> None:
    module, groups = _branchy_ir()
    message = (
        r"group 'out' removes channels, but the group cannot be pruned \(the network's outputs "
        r"\(logits\)\); leave it out of the plan"
    )
    with pytest.raises(InputError, match=message):
        PruningPlan.make(groups, {"out": [0]})
    plan = _plan_json(groups)
    plan["groups"]["out"] = {**plan["groups"]["c"], "size": 2, "keep": [1]}
    plan["groups"]["out"]["members"] = [
        {
            "path": "out",
            "op": "linear",
            "dim": "out",
            "offset": 0,
            "per_channel": 1,
            "stride": 1,
            "spacing": 1,
        }
    ]
    with pytest.raises(PipelineError, match=message):
        _run_with(module, plan, tmp_path)
    # Keeping every channel of it is no pruning, and allowed.
    plan["groups"]["out"]["keep"] = [0, 1]
    _run_with(module, plan, tmp_path)


def test_malformed_json_names_the_file_line_and_column(tmp_path: Path) -> None:
    module, _ = _branchy_ir()
    text = '{\n "format": "dopant-pruning-plan",\n "version": 1,,\n}\n'
    # Line 3 is ` "version": 1,,`: space, 9 characters of "version", colon, space, 1, comma;
    # the second comma, where a name must come, is column 1 + 9 + 4 + 1 = 15.
    with pytest.raises(PipelineError, match=r"plan.json:3:15: not valid JSON \("):
        _run_with(module, text, tmp_path)


def test_the_pass_without_a_plan_says_how_to_give_one() -> None:
    module, _ = _branchy_ir()
    with pytest.raises(
        PipelineError,
        match=r'needs a plan: give prune-channels\{plan="FILE.json"\} or set the module '
        r"attribute qnn.pruning_plan = \{group = array<i64: kept channels>\}",
    ):
        run_pipeline(module, "prune-channels")
