"""Numerics debugging (`dopant compare`): layer by layer, the simulator against the integer
reference, and the integer reference against the float network.

The binary's debug map says where each layer's output is left in DRAM (no region is reused, so
all of them survive the run) and names it as `reference.trace` names the quantized IR's values.
So every layer's integers from the simulator are compared with the reference's, element by
element: they must be equal, and the first layer where they are not is where a lowering or
simulator bug starts. Each integer value, dequantized, is also compared with the float
network's value of the same layer by SNR (dB): the first layer below a threshold is where
quantization starts to hurt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from dopant.compiler.driver import CompiledModel, check_compiled_from
from dopant.compiler.evaluate import BatchedRunner, snr_db
from dopant.dialects.qnn.values import float_name
from dopant.runtime import intops
from dopant.runtime.program import Program
from dopant.support.errors import InputError


@dataclass(frozen=True)
class LayerComparison:
    """One value of the network, over all compared images."""

    name: str  # the value's name in the reference trace (module path, `#k` on reuse)
    shape: tuple[int, ...]  # of one image's value
    mismatched: int  # elements where the simulator's integer differs from the reference's
    max_abs_diff: int  # largest |simulator - reference| (0 when bit-exact)
    snr_db: float | None  # dequantized reference vs float; None without a float counterpart

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Comparison:
    """Every value of a compiled network on `images` inputs, in execution order."""

    layers: tuple[LayerComparison, ...]
    images: int
    snr_threshold_db: float

    def first_mismatch(self) -> LayerComparison | None:
        """The first layer whose simulator output differs from the integer reference."""
        return next((row for row in self.layers if row.mismatched), None)

    def first_below_threshold(self) -> LayerComparison | None:
        """The first layer whose integer output is below the SNR threshold against float."""
        return next(
            (r for r in self.layers if r.snr_db is not None and r.snr_db < self.snr_threshold_db),
            None,
        )

    def table(self) -> str:
        rows = [
            [
                row.name,
                "x".join(map(str, row.shape)),
                f"{row.mismatched:,}" if row.mismatched else "0 (exact)",
                str(row.max_abs_diff),
                "-" if row.snr_db is None else _db(row.snr_db),
            ]
            for row in self.layers
        ]
        header = ["layer value", "shape", "sim != ref", "max |diff|", "ref vs float SNR (dB)"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in [header, *rows]
        ]
        return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])

    def summary(self) -> str:
        lines = [f"compared {len(self.layers)} layer values on {self.images} image(s)"]
        mismatch = self.first_mismatch()
        if mismatch is None:
            lines.append("simulator vs integer reference: bit-exact on every layer")
        else:
            lines.append(
                f"simulator vs integer reference: first diverges at '{mismatch.name}' "
                f"({mismatch.mismatched:,} of {mismatch.elements * self.images:,} elements "
                f"differ, max |diff| {mismatch.max_abs_diff})"
            )
        scored = [row for row in self.layers if row.snr_db is not None]
        if not scored:
            lines.append("integer reference vs float: no float network to compare with")
            return "\n".join(lines)
        worst = min(scored, key=lambda row: row.snr_db or 0.0)
        below = self.first_below_threshold()
        where = (
            f"first below {self.snr_threshold_db:g} dB at '{below.name}'"
            if below
            else f"every layer at or above {self.snr_threshold_db:g} dB"
        )
        lines.append(
            f"integer reference vs float: {where}; lowest {_db(worst.snr_db or 0.0)} dB at "
            f"'{worst.name}'"
        )
        return "\n".join(lines)


def _db(value: float) -> str:
    return "exact" if math.isinf(value) else f"{value:.1f}"


def compare(
    compiled: CompiledModel, x: np.ndarray, *, snr_threshold_db: float = 20.0
) -> Comparison:
    """Compare a compile's binary against its quantized stage and, when the compile kept one,
    its float stage, on `x` (N network inputs); see `compare_program`."""
    float_stage = next((s for s in ("calibrated", "canonical") if s in compiled.stages), None)
    return compare_program(
        compiled.program,
        compiled.ir("quantized"),
        x,
        float_module=compiled.ir(float_stage) if float_stage else None,
        snr_threshold_db=snr_threshold_db,
    )


def compare_program(
    program: Program,
    quantized: ModuleOp,
    x: np.ndarray,
    *,
    float_module: ModuleOp | None = None,
    snr_threshold_db: float = 20.0,
) -> Comparison:
    """Run `x` (N images, each a network input) through `program` on the simulator, the
    `quantized` IR it was compiled from on the integer reference and, if given, the float IR,
    and compare every layer's value; see the module docstring. InputError if the binary records
    the digest of another IR than `quantized`."""
    check_compiled_from(program.source, quantized, "the quantized IR given")
    if not program.values:
        raise InputError(
            "the binary has no debug values to compare (it was emitted without them); "
            "recompile it with this version of dopant."
        )
    images = np.asarray(x, np.float32)
    if images.ndim < 2 or len(images) == 0:
        raise InputError(f"compare needs a batch of images (N, ...), got shape {images.shape}.")
    # One batched run (each image bit-exact to its run alone): values with a leading N axis.
    simulated = program.run(images, values=True).values
    reference = BatchedRunner(quantized, len(images)).trace(images)
    floats = BatchedRunner(float_module, len(images)).trace(images) if float_module else {}
    rows = []
    for desc in program.values:
        if desc.name not in reference:
            raise InputError(
                f"the binary's layer value '{desc.name}' is not a value of the quantized IR; "
                "compare the binary with the IR it was compiled from."
            )
        sim = simulated[desc.name]
        ref = reference[desc.name]
        if ref.size != sim.size:
            raise InputError(
                f"the binary's layer value '{desc.name}' has {sim.size // len(images)} "
                f"elements per image but the quantized IR's has {ref.size // len(images)}; "
                "compare the binary with the IR it was compiled from."
            )
        ref = ref.reshape(sim.shape).astype(np.int64)
        diff = np.abs(sim - ref)
        real = floats.get(float_name(desc.name))
        snr = None
        if real is not None and real.size == ref.size:
            approx = intops.dequantize(ref, desc.scale, desc.zero_point)
            snr = snr_db(real.reshape(approx.shape), approx)
        rows.append(
            LayerComparison(
                desc.name, desc.shape, int(np.count_nonzero(diff)), int(diff.max()), snr
            )
        )
    return Comparison(tuple(rows), len(images), snr_threshold_db)
