"""The tiling cost model: a candidate plan's instructions, costed with the timing model's own
formulas (`backend.costs.instruction_cost`), summed per engine and for the DRAM channel.

A layer is software pipelined through double buffers, so in steady state the busiest resource
sets the pace: estimated cycles = max(load engine after the first tile's loads, compute or vector
engine, store engine before the last store, DRAM channel) + first tile's loads + last store.
An engine is charged the timing model's rule for it: a compute or vector instruction its
cycles, a DMA its share with `dma_outstanding_requests` in flight (`costs.engine_share`:
max(S, (L + S) / k), its transfer and its part of a latency that k of them overlap); the first
tile's loads, which nothing overlaps, take the time the rule gives them back to back
(`costs.dma_run_cycles`: about L + their transfers), the last store its own cycles.

Overlapped DMAs hide their latency only as far as the double buffers let them: a tile holds a
slot of a buffer from the start of the load that fills it to the end of its last user (for the
output buffer: the bias load and the loads queued behind it on the in-order load engine, the
convs, then store_acc; L twice; the multipliers' likewise), and each buffer has two slots, so
the layer takes at least half the sum of the holds on any one buffer. The estimate is the
larger of that and the engines' pace: the bound is what stops ever smaller tiles once the
engines overlap their latency.
Only tile shapes that occur are costed (full tiles and the shorter last ones), each once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from dopant.backend.costs import Cost, dma_run_cycles, engine_share, instruction_cost
from dopant.backend.target import AccelConfig
from dopant.dialects.isa import BY_MNEMONIC, Instruction
from dopant.passes.tiling import conv as tc
from dopant.passes.tiling import vector as tv
from dopant.passes.tiling.plan import ConvPlan, ConvShape, VectorPlan


@lru_cache(maxsize=1 << 16)
def _cost(config: AccelConfig, op: str, items: tuple[tuple[str, int], ...]) -> Cost:
    """One instruction's cost; IsaError if a field does not fit."""
    return instruction_cost(Instruction.make(op, **dict(items)), config)


@dataclass
class Estimate:
    """Busy cycles per engine and of the DRAM channel, for a whole layer."""

    config: AccelConfig
    busy: dict[str, int] = field(default_factory=dict)
    channel: int = 0
    instructions: int = 0
    first: int = 0  # the first tile's loads: nothing overlaps them
    first_share: int = 0  # what they add to the load engine's busy cycles
    last: int = 0  # the last store: nothing overlaps it
    last_share: int = 0
    holds: dict[str, int] = field(default_factory=dict)  # cycles tiles hold each double buffer

    def cost(self, op: str, fields: tc.Fields) -> Cost:
        # The builders in tiling.conv/vector make each kind of fields in one key order, so the
        # items need no sorting to be a cache key.
        return _cost(self.config, op, tuple(fields.items()))

    def share(self, cost: Cost) -> int:
        return engine_share(cost, self.config.dma_outstanding_requests)

    def add(
        self, op: str, fields: tc.Fields, count: int = 1, buffers: tuple[str, ...] = ()
    ) -> Cost:
        """Count `count` instructions like this one, each holding a slot of the double
        `buffers` it fills, reads or empties for its whole cycles; returns one's cost."""
        cost = self.cost(op, fields)
        engine = BY_MNEMONIC[op].engine
        self.busy[engine] = self.busy.get(engine, 0) + self.share(cost) * count
        self.channel += cost.channel_cycles * count
        self.instructions += count
        for buffer in buffers:
            self.hold(buffer, cost.cycles * count)
        return cost

    def hold(self, buffer: str, cycles: int) -> None:
        self.holds[buffer] = self.holds.get(buffer, 0) + cycles

    def queued(self, costs: list[Cost]) -> int:
        """Cycles until the last of these DMAs of one engine completes, issued back to back."""
        return dma_run_cycles(costs, self.config.dma_outstanding_requests)

    def first_loads(self, costs: list[Cost]) -> None:
        """The loads the first compute instruction waits for, issued back to back."""
        self.first = self.queued(costs)
        self.first_share = sum(self.share(cost) for cost in costs)

    def last_store(self, cost: Cost) -> None:
        self.last, self.last_share = cost.cycles, self.share(cost)

    @property
    def cycles(self) -> int:
        busy = self.busy
        paced = (
            max(
                busy.get("load", 0) - self.first_share,
                busy.get("compute", 0),
                busy.get("vector", 0),
                busy.get("store", 0) - self.last_share,
                self.channel,
            )
            + self.first
            + self.last
        )
        return max([paced] + [-(-hold // 2) for hold in self.holds.values()])


def sizes(total: int, step: int) -> list[tuple[int, int]]:
    """[(tile size, how many tiles)]: full tiles, then the shorter last one."""
    full, rest = divmod(total, step)
    return [(s, k) for s, k in ((step, full), (rest, 1)) if s and k]


def conv_estimate(shape: ConvShape, plan: ConvPlan, config: AccelConfig) -> Estimate:
    """The cost of lowering a conv layer with `plan` (as `convert-qnn-to-accel` emits it: a load is
    skipped when its buffer already holds the same block, see the reuse rules below)."""
    est = Estimate(config)
    n_tiles, r_tiles, k_chunks = tc.tile_counts(shape, plan)
    grouped = shape.groups > 1
    # Consecutive tiles that read the same block load it once.
    inputs_shared = not grouped and k_chunks == 1 and (plan.order == "rnc" or r_tiles == 1)
    weights_shared = k_chunks == 1 and (plan.order == "nrc" or n_tiles == 1)
    params_shared = plan.order == "nrc" or n_tiles == 1
    rows = sizes(shape.oh, plan.rows)
    for ns, n_count in sizes(shape.n, plan.n):
        k_sizes = sizes(shape.c, plan.c) if not grouped else [(shape.tile_channels(ns, plan.c), 1)]
        # The multipliers and the bias fill slots that the store_acc two tiles back frees; the
        # tile's later loads queue behind them on the in-order load engine (the input last), so
        # such a slot is held from its load through that queue (`queued`), the convs and the
        # tile's store_acc.
        first = _tile(ns, rows[0][0], k_sizes[0][0])
        bias = [est.cost("load", tc.bias_load(shape, first, 0, 0))] if shape.has_bias else []
        inputs = [] if inputs_shared else [est.cost("load", tc.input_load(shape, first, 0, 0))]
        store = est.cost("store_acc", tc.store_acc(shape, first, (0, 0), 0, (0, 0, 0)))
        params = n_count * (1 if params_shared else r_tiles)
        fields = tc.params_load(shape, _tile(ns, 1, 1), 0, 0)
        queue = est.queued([est.add("load", fields, params), *bias, *inputs])
        est.hold("params", (queue + store.cycles) * params)
        for cs, c_count in k_sizes:
            per_row_tile = 1 if weights_shared else r_tiles
            fields = tc.weight_load(shape, _tile(ns, 1, cs), 0, 0)
            est.add("load", fields, n_count * c_count * per_row_tile, ("weights",))
        for rs, r_count in rows:
            tiles = n_count * r_count
            if shape.has_bias:
                est.add("load", tc.bias_load(shape, _tile(ns, rs, 1), 0, 0), tiles)
                est.hold("outputs", est.queued(bias + inputs) * tiles)
            fields = tc.store_acc(shape, _tile(ns, rs, 1), (0, 0), 0, (0, 0, 0))
            est.add("store_acc", fields, tiles, ("outputs",))
            for cs, c_count in k_sizes:
                t = _tile(ns, rs, cs)
                fields = tc.conv(shape, t, config, (0, 0, 0), True)
                buffers = ("inputs", "weights", "outputs", "params")
                est.add("conv", fields, tiles * c_count, buffers)
                if not inputs_shared:
                    fields = tc.input_load(shape, t, 0, 0)
                    est.add("load", fields, tiles * c_count, ("inputs",))
    if inputs_shared:
        for rs, r_count in rows:
            fields = tc.input_load(shape, _tile(plan.n, rs, shape.c), 0, 0)
            est.add("load", fields, r_count, ("inputs",))
    est.first_loads(_first_loads(shape, plan, est))
    t = _tile(plan.n, plan.rows, plan.c)
    est.last_store(est.cost("store_acc", tc.store_acc(shape, t, (0, 0), 0, (0, 0, 0))))
    return est


def conv_compute_cycles(shape: ConvShape, plan: ConvPlan, config: AccelConfig) -> int:
    """The compute engine's cycles for `plan` (the loop order aside): a lower bound of
    `conv_estimate(shape, plan, config).cycles`, which charges the same convs and more, and a
    fraction of its work, so a plan search can skip plans that cannot win."""
    est = Estimate(config)
    grouped = shape.groups > 1
    for ns, n_count in sizes(shape.n, plan.n):
        k_sizes = sizes(shape.c, plan.c) if not grouped else [(shape.tile_channels(ns, plan.c), 1)]
        for rs, r_count in sizes(shape.oh, plan.rows):
            for cs, c_count in k_sizes:
                fields = tc.conv(shape, _tile(ns, rs, cs), config, (0, 0, 0), True)
                est.add("conv", fields, n_count * r_count * c_count)
    return est.busy.get("compute", 0)


def _tile(ns: int, rs: int, cs: int) -> tc.ConvTile:
    return tc.ConvTile(0, ns, 0, rs, 0, cs)


def _first_loads(shape: ConvShape, plan: ConvPlan, est: Estimate) -> list[Cost]:
    """The loads the first conv waits for, in the lowering's order."""
    t = _tile(plan.n, plan.rows, shape.tile_channels(plan.n, plan.c))
    loads = [tc.weight_load(shape, t, 0, 0), tc.params_load(shape, t, 0, 0)]
    if shape.has_bias:
        loads.append(tc.bias_load(shape, t, 0, 0))
    loads.append(tc.input_load(shape, t, 0, 0))
    return [est.cost("load", f) for f in loads]


def vector_estimate(
    shapes: Iterable[tv.VectorShape], plan: VectorPlan, config: AccelConfig
) -> Estimate:
    """The cost of lowering vector-unit layers (several for a concat's copies) with `plan`."""
    est = Estimate(config)
    for index, shape in enumerate(shapes):
        plane = tv.Plane(0, (shape.c, shape.h, shape.w), shape.x)
        out = tv.Plane(0, (shape.c, shape.oh, shape.ow), shape.out)
        params = (
            [est.add("load", tv.params_load(shape.kind, 0, 0))]
            if tv.param_words(shape.kind)
            else []
        )
        c_step, r_step = min(plan.c, shape.c), min(plan.rows, shape.oh)
        for cs, c_count in sizes(shape.c, c_step):
            for rs, r_count in sizes(shape.oh, r_step):
                count = c_count * r_count
                rows = tv.RowSpan(0, shape.in_rows(rs), 0, 0)
                fields = tv.load(plane, 0, cs, rows, 0)
                est.add("load", fields, count * shape.operands, ("inputs",))
                _vector_op(est, shape, cs, rows, rs, count)
                # A copy stores from its input buffer; the others from their output buffer.
                emptied = ("inputs",) if shape.kind == "copy" else ("outputs",)
                fields = tv.store(out, (cs, rs, shape.ow), (0, 0), 0)
                est.last_store(est.add("store", fields, count, emptied))
        if index == 0:
            rows = tv.RowSpan(0, shape.in_rows(r_step), 0, 0)
            first = est.cost("load", tv.load(plane, 0, c_step, rows, 0))
            est.first_loads(params + [first] * shape.operands)
    return est


def _vector_op(
    est: Estimate, shape: tv.VectorShape, cs: int, rows: tv.RowSpan, rs: int, count: int
) -> None:
    if shape.kind == "pool":
        est.add("vpool", tv.vpool(shape, cs, rows, rs, (0, 0)), count, ("inputs", "outputs"))
    elif shape.kind != "copy":
        op, fields = tv.elementwise(shape, cs * rs * shape.ow, (0, 0, 0), 0, (0, 0, 0))
        est.add(op, fields, count, ("inputs", "outputs"))


def largest(fits: Callable[[int], bool], limit: int) -> int:
    """The largest k in 1..limit with fits(k), for a monotone `fits`; 0 if none."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def options(total: int, quantum: int, splits: int = 16) -> list[int]:
    """Tile sizes worth trying, largest first: `total` cut into 1..`splits` near-equal tiles
    rounded up to a multiple of `quantum` (the array's width), and halvings down to 1."""
    values = set()
    for k in range(1, splits + 1):
        size = -(-total // k)
        values.add(min(total, -(-size // quantum) * quantum))
    size = total
    while size >= 1:
        values.add(size)
        size //= 2
    return sorted(values, reverse=True)


def balanced_rows(total: int, most: int, count: int = 3) -> list[int]:
    """Up to `count` row-tile heights <= `most` that cut `total` into near-equal tiles."""
    if most < 1:
        return []
    first = -(-total // most)
    return sorted({-(-total // k) for k in range(first, first + count) if k <= total}, reverse=True)
