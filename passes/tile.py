"""`tile`: choose tile sizes and loop orders for every integer op that becomes instructions."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import ArgSpec

from dopant.backend.config_attr import has_target, module_target, set_module_target
from dopant.backend.presets import load_target, preset, preset_names
from dopant.backend.target import AccelConfig
from dopant.dialects.isa import IsaError
from dopant.dialects.qnn import Conv2DOp, LinearOp
from dopant.dialects.qnn.base import forward
from dopant.passes.tiling.conv import ConvBuffers, array_bits, tile_counts
from dopant.passes.tiling.cost import (
    Estimate,
    balanced_rows,
    conv_compute_cycles,
    conv_estimate,
    largest,
    options,
    vector_estimate,
)
from dopant.passes.tiling.ops import planned_ops, vector_shapes
from dopant.passes.tiling.plan import (
    ORDERS,
    PLAN_ATTR,
    ConvPlan,
    ConvShape,
    VectorPlan,
)
from dopant.passes.tiling.vector import VectorBuffers, VectorShape, fitted
from dopant.support.errors import DopantError

DEFAULT_TARGET = "edge16"  # the machine `tile` plans for when neither option nor module names one


@dataclass(frozen=True)
class TilePass(ModulePass):
    """Plan every layer's tiles for an accelerator with an analytical cost model.

    Expects: batch-1 integer `qnn` IR from `quantize` (conv2d/linear each followed by the
    requantize of its si32 accumulator; adds, pools, standalone requantizes, relus, concats,
    reshapes between `qnn.quantize` and `qnn.dequantize`).
    Guarantees: every conv2d/linear carries `tile = {n, rows, c, order, cycles}` and every
    add, pool, standalone requantize, relu and concat `tile = {c, rows, cycles}` (see
    `tiling.plan`), chosen as the cheapest candidate by `tiling.cost` (the timing model's
    per-instruction costs summed per engine and DRAM channel) among those whose buffers fit
    the scratchpad and accumulator twice (double buffering) beside the parameter buffers and
    whose fields fit the ISA; the module carries the machine as `accel.config`, so
    `convert-qnn-to-accel` runs from text.
    The machine: `target`, an `AccelConfig` (from Python) or its text, a preset name or a .toml
    path (from a pipeline); without a target, the module's `accel.config` when it has one (the
    driver records the machine there, so a failing stage reproduces from its saved IR), else
    the `edge16` preset. `dataflow` ("ws"/"os") overrides the machine's ("" keeps it).
    Fails: on an unknown target or dataflow, float or unknown ops (naming them), batch > 1,
    and a layer no tile fits, naming its path and the smallest tile's needs.
    """

    name = "tile"
    target: str | AccelConfig = ""
    dataflow: str = ""

    def machine(self, module: ModuleOp) -> AccelConfig:
        """The AccelConfig this pass plans `module` for (see the class docstring)."""
        if isinstance(self.target, AccelConfig):
            config = self.target
        elif self.target:
            config = load_target(self.target)
        elif has_target(module):
            config = module_target(module)
        else:
            config = preset(DEFAULT_TARGET)
        return config.with_changes(dataflow=self.dataflow) if self.dataflow else config

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        config = self.machine(op)
        for layer in planned_ops(forward(op, "to tile")):
            if isinstance(layer, Conv2DOp | LinearOp):
                plan = plan_conv(ConvShape.of(layer), config)
                layer.attributes[PLAN_ATTR] = plan.attr()
            else:
                vector = plan_vector(vector_shapes(layer), config, layer.where)
                layer.attributes[PLAN_ATTR] = vector.attr()
        set_module_target(op, config)

    def spec(self, *, include_default: bool = False) -> ArgSpec:
        """The pass as pipeline text. A machine given as an object prints as its preset name
        when it is one (dataflow aside); any other has no text and is refused: record it on
        the module (`set_module_target`) and run `tile` without a target."""
        if not isinstance(self.target, AccelConfig):
            return super().spec(include_default=include_default)
        config = self.target
        if (
            preset_names().count(config.name)
            and preset(config.name).with_changes(dataflow=config.dataflow) == config
        ):
            dataflow = self.dataflow or config.dataflow
            return TilePass(config.name, dataflow).spec(include_default=include_default)
        raise DopantError(
            f"tile for the machine '{config.name}' has no pipeline text: it is not a preset. "
            "Record it on the module (backend.config_attr.set_module_target) and run `tile` "
            "without a target, or write it to a .toml file (AccelConfig.to_toml)."
        )


def _estimate(shape: ConvShape, plan: ConvPlan, config: AccelConfig) -> Estimate | None:
    try:
        return conv_estimate(shape, plan, config)
    except IsaError:  # a field too wide for the instruction: not a candidate
        return None


def _compute_cycles(shape: ConvShape, plan: ConvPlan, config: AccelConfig) -> int | None:
    try:
        return conv_compute_cycles(shape, plan, config)
    except IsaError:  # a field too wide for the instruction: not a candidate
        return None


def _conv_candidates(shape: ConvShape, config: AccelConfig) -> list[tuple[int, int]]:
    """(n, c) pairs to try: n a multiple of the array's columns (or whole groups), c a K-chunk
    whose taps fill the array's rows."""
    a_bits = array_bits(shape.x.bits, config.act_bits)
    fa, fw = config.fusion(array_bits(shape.weight.bits, config.weight_bits), a_bits)
    if shape.groups > 1:
        return [(g * shape.og, g * shape.cg) for g in options(shape.groups, 1)]
    depth, taps = config.rows * fa, shape.kh * shape.kw
    c_quantum = depth // gcd(depth, taps)
    n_options = options(shape.n, config.cols * fw)
    return [(n, c) for n in n_options for c in options(shape.c, c_quantum)]


# A network repeats layer shapes (a ResNet stage), and the co-design loop plans one network for
# many machines and channel counts: equal layers on equal machines share one search. The key
# leaves the layer's path out; the caches are bounded.
PLAN_CACHE_SIZE = 1 << 14


def clear_plan_caches() -> None:
    """Forget every cached plan (to time a first, cold plan search)."""
    _cheapest_conv.cache_clear()
    _cheapest_vector.cache_clear()


def plan_conv(shape: ConvShape, config: AccelConfig) -> ConvPlan:
    """The cheapest plan for a conv/linear layer whose buffers fit; DopantError if none."""
    plan = _cheapest_conv(dataclasses.replace(shape, path=""), config)
    if plan is None:
        raise DopantError(_conv_failure(shape, config))
    return plan


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _cheapest_conv(shape: ConvShape, config: AccelConfig) -> ConvPlan | None:
    best: tuple[tuple[int, ...], ConvPlan] | None = None
    for n, c in _conv_candidates(shape, config):

        def fits(rows: int, n: int = n, c: int = c) -> bool:
            return ConvBuffers.of(shape, ConvPlan(n, rows, c, "nrc", 0)).fits(config)

        for rows in balanced_rows(shape.oh, largest(fits, shape.oh)):
            n_tiles, r_tiles, _ = tile_counts(shape, ConvPlan(n, rows, c, "nrc", 0))
            # A plan whose convs alone take longer than the best plan's estimate cannot win
            # (the estimate charges those convs and more): skip its full estimate.
            floor = _compute_cycles(shape, ConvPlan(n, rows, c, "nrc", 0), config)
            if floor is None or (best is not None and floor > best[0][0]):
                continue
            orders = ORDERS if n_tiles > 1 and r_tiles > 1 else ORDERS[:1]
            for order in orders:
                plan = ConvPlan(n, rows, c, order, 0)
                est = _estimate(shape, plan, config)
                if est is None:
                    continue
                # Ties go to fewer instructions, then to larger tiles.
                key = (est.cycles, est.instructions, -n, -rows, -c, ORDERS.index(order))
                if best is None or key < best[0]:
                    best = (key, ConvPlan(n, rows, c, order, est.cycles))
    return None if best is None else best[1]


def _conv_failure(shape: ConvShape, config: AccelConfig) -> str:
    n, c = (shape.og, shape.cg) if shape.groups > 1 else (1, 1)
    smallest = ConvPlan(n, 1, c, "nrc", 0)
    buffers = ConvBuffers.of(shape, smallest)
    group = ", one whole group" if shape.groups > 1 else ""
    why = (
        f"the smallest tile ({n} output channel(s), 1 output row of {shape.ow}, {c} input "
        f"channel(s) x {shape.in_rows(1)} x {shape.in_cols} input{group}) needs "
        f"{buffers.sp_bytes} of {config.scratchpad_bytes} scratchpad bytes and "
        f"{buffers.acc_words} of {config.accumulator_words} accumulator words with double "
        "buffering"
    )
    if buffers.fits(config):
        try:
            conv_estimate(shape, smallest, config)
        except IsaError as error:
            why = f"an instruction field does not fit the ISA ({error})"
    return (
        f'tile: no tiling of "{shape.path}" ([{shape.c}, {shape.h}, {shape.w}] -> '
        f"[{shape.n}, {shape.oh}, {shape.ow}], kernel {shape.kh}x{shape.kw}) fits "
        f"'{config.name}': {why}."
    )


def plan_vector(shapes: Sequence[VectorShape], config: AccelConfig, where: str) -> VectorPlan:
    """The cheapest plan for a vector-unit layer (all of a concat's copies share it)."""
    plan = _cheapest_vector(tuple(dataclasses.replace(s, path="") for s in shapes), config)
    if plan is None:
        need = max(VectorBuffers.of(s, VectorPlan(1, 1, 0)).sp_bytes for s in shapes)
        shape = shapes[0]
        raise DopantError(
            f"tile: no tiling of {where} ([{shape.c}, {shape.h}, {shape.w}]) fits "
            f"'{config.name}': one channel by one row needs {need} of "
            f"{config.scratchpad_bytes} scratchpad bytes with double buffering, or its "
            "instruction fields do not fit the ISA."
        )
    return plan


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _cheapest_vector(shapes: tuple[VectorShape, ...], config: AccelConfig) -> VectorPlan | None:
    channels, rows_total = max(s.c for s in shapes), max(s.oh for s in shapes)

    def fits(c: int, rows: int) -> bool:
        return all(
            VectorBuffers.of(s, fitted(VectorPlan(c, rows, 0), s)).fits(config) for s in shapes
        )

    best: tuple[tuple[int, ...], VectorPlan] | None = None
    for c in options(channels, 1):
        most = largest(functools.partial(fits, c), rows_total)
        for rows in balanced_rows(rows_total, most):
            plan = VectorPlan(c, rows, 0)
            try:
                est = vector_estimate(shapes, plan, config)
            except IsaError:
                continue
            key = (est.cycles, est.instructions, -c, -rows)
            if best is None or key < best[0]:
                best = (key, VectorPlan(c, rows, est.cycles))
    return None if best is None else best[1]
