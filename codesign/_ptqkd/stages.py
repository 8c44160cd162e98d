"""Cutting a fake-quant network into stages at module paths.

A cut at module path P falls after the last node whose op comes from P (its path is P, or below
it: `P.child`, `P/add`). It is valid only where exactly one tensor crosses it: every value made
before the cut and read after it is that one value, which the next stage takes as its input.
A cut inside a residual block fails this (the block's input reaches its add past the cut), and
so does one that names no op or the network's end. Stages are the runs of nodes between cuts,
in IR order; each trains its own conv/linear layers and the activation steps only it uses. A
step two stages share, the one at each cut, stays at its calibrated value, so stages trained
apart meet on the same integer grid when stitched.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise

from torch import nn
from xdsl.ir import Operation, SSAValue

from dopant.compiler.fakequant import FakeQuantNetwork
from dopant.compiler.fakequant.build import Program
from dopant.compiler.summary import macs
from dopant.dialects.qnn import AddOp, Conv2DOp, LinearOp, QnnOp
from dopant.dialects.qnn.values import output_params
from dopant.support.errors import InputError


@dataclass(frozen=True)
class Cut:
    """A valid stage boundary: `program.nodes[:node]` run before it and `value` is the one
    tensor that crosses it; `depth` counts the components of the shallowest module path that
    ends there."""

    path: str
    node: int
    value: SSAValue
    depth: int


@dataclass(frozen=True)
class Stage:
    """One stage: `program.nodes[start:stop]`, from the cut at `begins` ("" for the network's
    input) to the cut at `ends` ("" for its output). It reads value `input_id` (None: the
    image), quantized with the frozen step `input_step` to `input_range`, and writes value
    `output_id` (None: the network's dequantized output). `parameters` are the names of the
    network parameters it trains, `layers` the paths of its conv/linear layers. Plain data, so
    a stage travels to another process."""

    index: int
    start: int
    stop: int
    begins: str
    ends: str
    input_id: int | None
    input_step: str | None
    input_range: tuple[int, int]
    output_id: int | None
    layers: tuple[str, ...]
    parameters: tuple[str, ...]
    macs: int


def under(op_path: str, module: str) -> bool:
    """Whether an op with path `op_path` comes from module `module` or one inside it."""
    return op_path == module or op_path.startswith((f"{module}.", f"{module}/"))


def _path(op: Operation) -> str:
    return op.path.data if isinstance(op, QnnOp) else op.name


def _readers(value: SSAValue, position: dict[Operation, int], node: int) -> list[Operation]:
    """The ops at or after `node` (by `position` in the program) that read `value`."""
    return [use.operation for use in value.uses if position.get(use.operation, -1) >= node]


def check_module_path(model: nn.Module, path: str) -> None:
    """InputError unless `path` names a submodule of `model`."""
    if path and path in dict(model.named_modules()):
        return
    top = ", ".join(name for name, _ in model.named_children())
    raise InputError(
        f"stage boundary '{path}' is not a module path of the network; its top-level modules "
        f"are {top} (write nested ones with dots, e.g. layer1.0)."
    )


def find_cut(program: Program, path: str) -> Cut:
    """The cut after module `path`; InputError naming the path when no op comes from it, when
    it ends the network, or when more than one tensor crosses it (a residual connection)."""
    inside = [i for i, op in enumerate(program.ops) if under(_path(op), path)]
    if not inside:
        raise InputError(
            f"stage boundary '{path}': no op of the quantized network comes from this module "
            "(a batch norm or an activation is folded into the layer before it); end the "
            "stage at a module that computes something, such as a whole block."
        )
    node = inside[-1] + 1
    if node >= len(program.ops) - 1:  # only the output's dequantize would follow
        raise InputError(
            f"stage boundary '{path}' is the end of the network; the last stage always ends at "
            "the output, so leave it out."
        )
    position = {op: i for i, op in enumerate(program.ops)}
    made = [v for op in program.ops[:node] for v in op.results if v in program.ids]
    crossing = {v: readers for v in made if (readers := _readers(v, position, node))}
    if len(crossing) != 1:
        shown = "; ".join(
            f"the output of {_path(v.owner)} (read by "  # type: ignore[arg-type]
            f"{', '.join(map(_path, readers))})"
            for v, readers in crossing.items()
        )
        raise InputError(
            f"stage boundary '{path}' cuts a residual connection: {len(crossing)} tensors "
            f"cross it, {shown}; a stage hands one tensor to the next, so end it after a "
            "whole block."
        )
    (value,) = crossing
    if value not in program.step_of:
        raise InputError(
            f"stage boundary '{path}' falls on an si32 accumulator (the output of "
            f"{_path(value.owner)}); end the stage after its requantize."  # type: ignore[arg-type]
        )
    return Cut(path, node, value, path.count(".") + 1)


def module_cut(model: nn.Module, program: Program, path: str) -> Cut:
    """The cut after module `path` of `model`, checked (see `find_cut`)."""
    check_module_path(model, path)
    return find_cut(program, path)


def block_cuts(model: nn.Module, program: Program) -> list[Cut]:
    """Every valid cut after a whole module of `model`, in network order, each named by the
    shallowest module that ends there (`layer1` before `layer1.0`)."""
    cuts: dict[int, Cut] = {}
    for path, _ in model.named_modules():  # parents before their children
        if not path:
            continue
        try:
            cut = find_cut(program, path)
        except InputError:
            continue
        if cut.node not in cuts or cut.depth < cuts[cut.node].depth:
            cuts[cut.node] = cut
    return [cuts[node] for node in sorted(cuts)]


def residual_stages(model: nn.Module, program: Program) -> list[str]:
    """The top-level modules that hold a residual add, in network order."""
    found: list[str] = []
    for op in program.ops:
        if isinstance(op, AddOp):
            top = next((n for n, _ in model.named_children() if under(op.path.data, n)), None)
            if top is not None and top not in found:
                found.append(top)
    return found


def balanced_cuts(program: Program, candidates: list[Cut], count: int) -> list[Cut]:
    """`count` of `candidates` (in network order) that split the network's MACs most evenly:
    the largest stage is as small as it can be (ties: the earliest cuts)."""
    if count == 0:
        return []
    work = [macs(op) if isinstance(op, QnnOp) else 0 for op in program.ops]
    total = [0]
    for w in work:
        total.append(total[-1] + w)
    ends = [c.node for c in candidates]

    def span(a: int, b: int) -> int:
        return total[b] - total[a]

    # best[i]: (largest stage, chosen indices) with the last chosen cut at candidate i.
    best: list[tuple[int, tuple[int, ...]]] = [(span(0, ends[i]), (i,)) for i in range(len(ends))]
    for _ in range(count - 1):
        best = [
            min(
                ((max(best[j][0], span(ends[j], ends[i])), (*best[j][1], i)) for j in range(i)),
                default=(total[-1] + 1, ()),
            )
            for i in range(len(ends))
        ]
    finished = [(max(b[0], span(ends[i], len(work))), b[1]) for i, b in enumerate(best) if b[1]]
    _, chosen = min(finished)
    return [candidates[i] for i in chosen]


def plan_stages(network: FakeQuantNetwork, cuts: list[Cut]) -> list[Stage]:
    """The stages between `cuts` (valid cuts, in network order); InputError when two cuts
    fall at the same place or out of order."""
    program = network.program
    for before, after in pairwise(cuts):
        if after.node <= before.node:
            raise InputError(
                f"stage boundaries must follow the network's order, each after the one before: "
                f"'{after.path}' ends at or before '{before.path}'."
            )
    bounds = [0, *(c.node for c in cuts), len(program.nodes)]
    users: dict[str, set[int]] = defaultdict(set)  # step key -> the stages that use it
    for index, (start, stop) in enumerate(pairwise(bounds)):
        for op in program.ops[start:stop]:
            for value in (*op.operands, *op.results):
                if value in program.step_of:
                    users[program.alias[program.step_of[value]]].add(index)
    names = [name for name, _ in network.named_parameters()]
    stages = []
    for index, (start, stop) in enumerate(pairwise(bounds)):
        ops = program.ops[start:stop]
        layers = {
            program.layer_of[op]: _path(op)
            for op in ops
            if isinstance(op, Conv2DOp | LinearOp) and op in program.layer_of
        }
        steps = {key for key, used in users.items() if used == {index}}
        owned = tuple(
            name
            for name in names  # `layers.KEY.weight`, `steps.KEY`, ...
            if name.split(".")[1] in (layers if name.startswith("layers.") else steps)
        )
        entry = cuts[index - 1] if index else None
        exit_ = cuts[index] if index < len(cuts) else None
        params = output_params(entry.value) if entry else None
        stages.append(
            Stage(
                index,
                start,
                stop,
                entry.path if entry else "",
                exit_.path if exit_ else "",
                program.ids[entry.value] if entry else None,
                program.alias[program.step_of[entry.value]] if entry else None,
                (params.qmin, params.qmax) if params else (0, 0),
                program.ids[exit_.value] if exit_ else None,
                tuple(layers.values()),
                owned,
                sum(macs(op) for op in ops if isinstance(op, QnnOp)),
            )
        )
    return stages
