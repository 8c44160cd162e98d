"""Emission: an `accel` module to a `ProgramImage` and to `.dpb` bytes.

Instructions are taken in op order; runs of consecutive instructions with the same module path
become the debug map's layer ranges, so per-layer statistics name the torch layers; `value`
tensors become the debug map's values, where a debugger reads each layer's output; `layer` ops
its GEMMs, the untiled geometry of each conv and linear layer for the fold model.
"""

from __future__ import annotations

from xdsl.dialects.builtin import IntegerAttr, ModuleOp, Signedness

from dopant.backend.binary import write_program
from dopant.backend.config_attr import module_source, module_target
from dopant.backend.image import LayerGemm, LayerRange, ProgramImage, Segment, TensorDesc
from dopant.dialects.accel import InstructionOp, LayerOp, SegmentOp, TensorOp
from dopant.support.errors import DopantError


class EmitError(DopantError):
    """An accel module that does not describe a complete program; names what is missing."""


def _dram_bytes(module: ModuleOp) -> int:
    size = module.attributes.get("accel.dram_bytes")
    if not isinstance(size, IntegerAttr):
        raise EmitError("the accel module has no accel.dram_bytes attribute.")
    return size.value.data


def _tensor(op: TensorOp) -> TensorDesc:
    p = op.params
    return TensorDesc(
        op.tensor_name.data,
        tuple(int(d) for d in op.shape.iter_values()),
        op.dram.value.data,
        p.bits.data,
        p.is_signed,
        p.scales[0],
        p.zero_points[0],
    )


def layer_ranges(paths: list[str]) -> tuple[LayerRange, ...]:
    """The debug map's layer ranges: runs of consecutive instructions with the same path."""
    ranges: list[LayerRange] = []
    for index, path in enumerate(paths):
        if ranges and ranges[-1].name == path and ranges[-1].stop == index:
            ranges[-1] = LayerRange(path, ranges[-1].start, index + 1)
        else:
            ranges.append(LayerRange(path, index, index + 1))
    return tuple(ranges)


def layer_gemm(op: LayerOp) -> LayerGemm:
    """The debug map's record of an `accel.layer`: its untiled GEMM geometry."""
    return LayerGemm(op.path.data, **op.gemm())


def emit_image(module: ModuleOp) -> ProgramImage:
    """The program an accel module describes."""
    config = module_target(module)
    instructions, paths, segments, gemms = [], [], [], []
    tensors: dict[str, list[TensorDesc]] = {"input": [], "output": [], "value": []}
    for op in module.body.block.ops:
        if isinstance(op, InstructionOp):
            instructions.append(op.instruction())
            paths.append(op.path.data)
        elif isinstance(op, SegmentOp):
            elem = op.element()
            segments.append(
                Segment(
                    op.dram.value.data,
                    elem.width.data,
                    elem.signedness.data != Signedness.UNSIGNED,
                    op.numpy(),
                )
            )
        elif isinstance(op, TensorOp):
            tensors[op.role.data].append(_tensor(op))
        elif isinstance(op, LayerOp):
            gemms.append(layer_gemm(op))
        else:
            raise EmitError(f"{op.name} cannot appear at the top of an accel module.")
    if not tensors["input"] or not tensors["output"]:
        raise EmitError("the accel module declares no input or no output tensor.")
    return ProgramImage(
        config.stable_hash(),
        config.to_dict(),
        tuple(instructions),
        tuple(segments),
        tuple(tensors["input"]),
        tuple(tensors["output"]),
        layer_ranges(paths),
        _dram_bytes(module),
        tuple(tensors["value"]),
        tuple(gemms),
        module_source(module),
    )


def emit_binary(module: ModuleOp) -> bytes:
    """The `.dpb` bytes of an accel module (the same module always gives the same bytes)."""
    return write_program(emit_image(module))
