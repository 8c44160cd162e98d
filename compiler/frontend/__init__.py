"""The torch frontend: `import_model(model, example_inputs)` traces a model into `qnn` IR.

Stages, in order:
1. `torch.export` in eval mode, then core-ATen decomposition with the ops `qnn` handles kept whole.
2. A scan of every node against the lowering table (`LOWERINGS`); all unsupported
   ops are reported together, each with its module path, before any IR is built.
3. One `func.func @forward` with a `qnn` op per node, parameters as `qnn.constant`s.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence

import torch
from torch import fx
from xdsl.builder import ImplicitBuilder
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType, f32
from xdsl.ir import SSAValue

from dopant.compiler.frontend.base import Emitter, Lowering, aten, op_name
from dopant.compiler.frontend.layers import LAYER_LOWERINGS
from dopant.compiler.frontend.tensor_ops import TENSOR_LOWERINGS
from dopant.compiler.irio import verify
from dopant.compiler.models.modes import eval_mode
from dopant.support.errors import InputError, UnsupportedOpsError

LOWERINGS: dict[object, Lowering] = {**LAYER_LOWERINGS, **TENSOR_LOWERINGS}

# Ops the core-ATen decomposition would break apart but `qnn` takes whole.
KEEP_WHOLE = (
    aten.conv2d.default,
    aten.conv2d.padding,
    aten.linear.default,
    aten.relu6.default,
    aten.max_pool2d.default,
    aten.adaptive_avg_pool2d.default,
    aten.pad.default,
)


def import_model(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
) -> ModuleOp:
    """Trace `model` on `example_inputs` into a verified `qnn` module with `func.func @forward`.

    Raises `UnsupportedOpsError` listing every op dopant cannot import (with module paths) and
    `InputError` when torch cannot trace the model on inputs of the given shapes.
    """
    inputs = _as_input_tuple(example_inputs)
    program = _export(model, inputs)
    graph = program.graph
    _check_supported(graph, frozenset(_parameters(program)))
    paths = _node_paths(graph, model)
    module = _build(program, paths)
    verify(module, "after import (a frontend bug: please report it)")
    return module


def _as_input_tuple(
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    inputs = (
        (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    )
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise InputError(
                f"example input {i} is a {type(x).__name__}, not a torch.Tensor; "
                "pass tensors of the shape the model takes."
            )
        if x.dtype != torch.float32:
            raise InputError(
                f"example input {i} has dtype {x.dtype}; dopant imports float32 "
                "models, so pass a float32 tensor."
            )
    return inputs


def _export(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]
) -> torch.export.ExportedProgram:
    """The model traced in eval mode (batch norms on their running statistics), each module's
    train/eval flag put back afterwards, so importing leaves a model in training as it was."""
    with eval_mode(model):
        return _traced(model, inputs)


def _traced(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]
) -> torch.export.ExportedProgram:
    shapes = ", ".join(str(list(x.shape)) for x in inputs)
    try:
        with torch.no_grad():
            model(*inputs)
        with warnings.catch_warnings():
            # torch 2.13's export warns about its own use of a deprecated pytree API.
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(model, inputs)
    except Exception as error:  # torch raises many types; all mean the same thing here
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(
            f"torch could not run the model on input shape(s) {shapes}: {first} "
            "Check the input shape (--input-shape on the CLI)."
        ) from error
    table = torch.export.default_decompositions()
    for op in KEEP_WHOLE:
        table.pop(op, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return program.run_decompositions(table)


def _calls(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function"]


def _module_path(node: fx.Node) -> tuple[str, str]:
    """(call key, module path) of the innermost module a node was traced in; '@n' marks reuse."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    key, (path, _) = list(stack.items())[-1]
    reuse = key.rsplit("@", 1)[1] if "@" in key else ""
    return key, f"{path}@{reuse}" if reuse else path


def _check_supported(graph: fx.Graph, params: frozenset[str]) -> None:
    problems: list[tuple[str, str]] = []
    supported = {str(target) for target in LOWERINGS}
    for node in _calls(graph):
        lowering = LOWERINGS.get(node.target)
        reason = lowering.check(node, params) if lowering else "not supported"
        if reason is None:
            continue
        path = _module_path(node)[1] or node.name
        # A decomposed op is reported by the name the user wrote (aten.hardswish, not aten.mul).
        # meta["original_aten"] is an equal-named copy of the op, so compare names.
        original = node.meta.get("original_aten")
        if original is not None and str(original) != str(node.target):
            form = " (in a form dopant does not import)" if str(original) in supported else ""
            entry = (path, op_name(original) + form)
        else:
            name = op_name(node.target)
            entry = (path, name if reason == "not supported" else f"{name} ({reason})")
        if entry not in problems:
            problems.append(entry)
    if problems:
        raise UnsupportedOpsError(problems)


def _node_paths(graph: fx.Graph, model: torch.nn.Module) -> dict[fx.Node, str]:
    """A unique, stable name per emitting node: the module path when a leaf module's call made
    one op (`layer1.0.conv1`), else the path and the node name (`layer1.0/add`)."""
    modules = dict(model.named_modules())
    emitting = [n for n in _calls(graph) if LOWERINGS[n.target].emits]
    per_call = Counter(_module_path(n)[0] for n in emitting)
    paths: dict[fx.Node, str] = {}
    for node in emitting:
        key, path = _module_path(node)
        module = modules.get(path.split("@")[0]) if path else None
        is_leaf = module is not None and next(module.children(), None) is None
        if is_leaf and per_call[key] == 1:
            paths[node] = path
        else:
            paths[node] = f"{path}/{node.name}" if path else node.name
    return paths


def _parameters(program: torch.export.ExportedProgram) -> dict[str, tuple[str, torch.Tensor]]:
    """Placeholder name -> (fully qualified name, value) of every parameter, buffer and constant."""
    signature = program.graph_signature
    tensors = {**program.state_dict, **program.constants}
    names = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }
    return {name: (fqn, tensors[fqn]) for name, fqn in names.items()}


def _tensor_type(node: fx.Node) -> TensorType:
    return TensorType(f32, list(node.meta["val"].shape))


def _build(program: torch.export.ExportedProgram, paths: dict[fx.Node, str]) -> ModuleOp:
    graph = program.graph
    signature = program.graph_signature
    user_inputs = [
        n for n in graph.nodes if n.op == "placeholder" and n.name in signature.user_inputs
    ]
    output = next(n for n in graph.nodes if n.op == "output")
    results = [r for r in output.args[0] if isinstance(r, fx.Node)]
    module = ModuleOp([])
    with ImplicitBuilder(module.body):
        in_types = [_tensor_type(n) for n in user_inputs]
        fn = func.FuncOp("forward", (in_types, [_tensor_type(r) for r in results]))
        with ImplicitBuilder(fn.body) as args:
            emitter = Emitter(paths, _parameters(program))
            for node, arg in zip(user_inputs, args, strict=True):
                arg.name_hint = node.name
                emitter.values[node] = arg
            for node in _calls(graph):
                LOWERINGS[node.target].emit(emitter, node)
            returned: list[SSAValue] = [emitter.value(r) for r in results]
            func.ReturnOp(*returned)
    return module
