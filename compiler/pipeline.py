"""Pass registry and pipeline runner: `run_pipeline(module, "fold-batchnorm,fuse-activation")`.

A pipeline is text, as for `mlir-opt`: passes separated by commas, options in braces separated
by spaces (`quantize{weight-bits=4 per-channel=true}`). After each pass the module is verified
(on by default), its IR can be dumped, and the pass is timed.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TextIO

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import ArgSpec, parse_pipeline
from xdsl.utils.exceptions import ArgSpecParseError

from dopant.compiler.irio import ir_text, verify
from dopant.dialects.context import make_context
from dopant.support.errors import DopantError, PipelineError

# Pipeline name -> "module:class". One pass per file, the file named after the pass.
_PASSES = {
    "fold-batchnorm": "dopant.passes.fold_batchnorm:FoldBatchNormPass",
    "fuse-activation": "dopant.passes.fuse_activation:FuseActivationPass",
    "set-bits": "dopant.passes.set_bits:SetBitsPass",
    "prune-channels": "dopant.passes.prune_channels:PruneChannelsPass",
    "quantize": "dopant.passes.quantize:QuantizePass",
    "set-batch": "dopant.passes.set_batch:SetBatchPass",
    "tile": "dopant.passes.tile:TilePass",
    "convert-qnn-to-accel": "dopant.passes.convert_qnn_to_accel:ConvertQnnToAccelPass",
    "cse": "xdsl.transforms.common_subexpression_elimination:CommonSubexpressionElimination",
    "dce": "xdsl.transforms.dead_code_elimination:DeadCodeElimination",
}


def _loader(target: str) -> Callable[[], type[ModulePass]]:
    module, _, name = target.partition(":")
    return lambda: getattr(importlib.import_module(module), name)


# A package above the compiler adds passes of its own through this entry point group (name ->
# "module:class" in its pyproject.toml), as it adds CLI commands.
PASS_GROUP = "dopant.passes"


def _registry() -> dict[str, str]:
    found = {ep.name: ep.value for ep in entry_points(group=PASS_GROUP)}
    return {**_PASSES, **{n: v for n, v in sorted(found.items()) if n not in _PASSES}}


def available_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    """Every pass a pipeline may name, as lazy factories (the shape `xdsl.universe` expects)."""
    return {name: _loader(target) for name, target in _registry().items()}


# Summaries for upstream passes that carry no docstring.
_UPSTREAM_SUMMARIES = {
    "cse": "Common subexpression elimination (from xDSL): merges identical pure ops.",
    "dce": "Dead code elimination (from xDSL): erases pure ops whose results are unused.",
}


def summary_of(name: str) -> str:
    """The first line of a pass's docstring: what it does."""
    doc = pass_class(name).__doc__
    if name in _UPSTREAM_SUMMARIES or not doc:
        return _UPSTREAM_SUMMARIES.get(name, "")
    return doc.strip().splitlines()[0]


def pass_class(name: str) -> type[ModulePass]:
    registry = _registry()
    if name not in registry:
        raise PipelineError(f"unknown pass '{name}'; valid passes: {', '.join(registry)}.")
    return available_passes()[name]()


def options_of(cls: type[ModulePass]) -> list[tuple[str, str, Any]]:
    """(option name as written in pipelines, type, default) for each option of a pass."""
    return [
        (f.name.replace("_", "-"), _type_name(f.type), f.default) for f in dataclasses.fields(cls)
    ]


def _type_name(annotation: object) -> str:
    """The type an option takes in pipeline text: a union's first member (`target: str |
    AccelConfig` is text in a pipeline, an object only from Python)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    return (text or str(annotation)).split(" | ")[0]


def _describe_options(cls: type[ModulePass]) -> str:
    options = options_of(cls)
    if not options:
        return "it takes no options"
    return "its options are " + ", ".join(
        f"{n} ({t}, default {option_text(d)})" for n, t, d in options
    )


def option_text(value: object) -> str:
    """A default value as pipeline text writes it (`true`, `4`, `"a","b"`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(option_text(v) for v in value) or "()"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _convert(pass_name: str, option: str, kind: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Check an option's values against its declared type; 1 is accepted for a float 1.0."""
    scalar = kind.removeprefix("tuple[").removesuffix(", ...]")
    if kind == scalar and len(values) != 1:
        raise PipelineError(
            f"option '{option}' of pass '{pass_name}' takes one {kind} value, got {len(values)}."
        )
    converted = []
    for v in values:
        if scalar == "float" and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        wanted = {"int": int, "float": float, "bool": bool, "str": str}.get(scalar)
        if wanted is not None and (type(v) is not wanted):
            example = {
                "bool": "true or false",
                "int": "an integer such as 4",
                "float": "a number such as 0.5",
                "str": 'text such as "name"',
            }[scalar]
            raise PipelineError(
                f"option '{option}' of pass '{pass_name}' takes {example}, got {v!r}."
            )
        converted.append(v)
    return tuple(converted)


def _instantiate(spec: ArgSpec) -> ModulePass:
    cls = pass_class(spec.name)
    kinds = {name: kind for name, kind, _ in options_of(cls)}
    parameters: dict[str, Any] = {}
    for key, values in spec.parameters.items():
        option = key.replace("_", "-")
        if option not in kinds:
            raise PipelineError(
                f"pass '{spec.name}' has no option '{key}'; {_describe_options(cls)}."
            )
        parameters[option] = _convert(spec.name, option, kinds[option], tuple(values))
    try:
        return cls.from_pass_spec(ArgSpec(spec.name, parameters))
    except (ValueError, TypeError) as error:  # option types _convert does not know
        raise PipelineError(
            f"bad options for pass '{spec.name}': {error}; {_describe_options(cls)}."
        ) from error


def parse(spec: str) -> list[ModulePass]:
    """Parse pipeline text into pass instances; a bad name, option or syntax is a PipelineError."""
    try:
        specs = list(parse_pipeline(spec))
    except ArgSpecParseError as error:  # derives from BaseException, not Exception
        detail = [line.strip() for line in str(error).splitlines() if line.strip()][-1]
        raise PipelineError(f"cannot parse pipeline '{spec}': {detail}.") from None
    return [_instantiate(s) for s in specs]


@dataclass
class PipelineReport:
    """What a pipeline run did: seconds per pass, in order."""

    timings: list[tuple[str, float]] = field(default_factory=list)

    def table(self) -> str:
        total = sum(t for _, t in self.timings) or 1e-12
        rows = [f"{'pass':<24}{'ms':>10}{'share':>8}"]
        rows += [f"{name:<24}{t * 1e3:>10.2f}{t / total:>8.1%}" for name, t in self.timings]
        rows.append(f"{'total':<24}{total * 1e3:>10.2f}")
        return "\n".join(rows)


def run_pipeline(
    module: ModuleOp,
    pipeline: str | Iterable[ModulePass],
    *,
    verify_each: bool = True,
    print_ir_after: Iterable[str] = (),
    print_ir_after_all: bool = False,
    dump: TextIO | None = None,
    ctx: Context | None = None,
) -> PipelineReport:
    """Run the passes of `pipeline` on `module` in place.

    After each pass the module is verified (unless `verify_each` is False) and, for passes named
    in `print_ir_after` or all passes, its IR is written to `dump` (standard error by default,
    as mlir-opt does) under an MLIR-style header.
    A pass that raises a DopantError is reported as a PipelineError naming the pass.
    """
    passes = parse(pipeline) if isinstance(pipeline, str) else list(pipeline)
    after = set(print_ir_after)
    ctx = ctx or make_context()
    report = PipelineReport()
    for p in passes:
        start = time.perf_counter()
        try:
            p.apply(ctx, module)
        except DopantError as error:
            raise PipelineError(f"pass '{p.name}' failed: {error}") from error
        report.timings.append((p.name, time.perf_counter() - start))
        if verify_each:
            verify(module, f"after pass '{p.name}'")
        if print_ir_after_all or p.name in after:
            (dump or sys.stderr).write(
                f"// -----// IR Dump After {p.name} //----- //\n{ir_text(module)}"
            )
    return report
