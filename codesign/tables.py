"""The text tables `dopant groups`, `dopant prune` and `dopant codesign` print.

`groups_table` lists coupling groups (id, size, prunable or why not, members, what one channel
costs); `layers_table` compares a network's layers before and after pruning (channels in and
out, MACs, parameters) with the totals and the fractions removed. `dopant codesign` prints
`rounds_table` (each round's budget, prediction and measurement) and `codesign_table` (each
latency row's channels, widths and cycles before and after).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dopant.codesign.result import CodesignResult, Round
from dopant.dialects.qnn.base import forward
from dopant.passes._prune_channels.costs import LayerShape, layer_shapes, totals
from dopant.passes._prune_channels.groups import Group, Member

MEMBERS_SHOWN = 4  # members listed per group before "+N more"


def _member(m: Member) -> str:
    return f"{m.path} {m.dim}@{m.offset}"


def members_text(group: Group, shown: int = MEMBERS_SHOWN) -> str:
    """'conv1 out@0, conv2 in@0, ... (+3 more)': the first `shown` members of `group`."""
    listed = ", ".join(_member(m) for m in group.members[:shown])
    rest = len(group.members) - shown
    return f"{listed}, ... (+{rest} more)" if rest > 0 else listed


def groups_table(groups: Sequence[Group]) -> str:
    """One line per group and a summary line of the prunable channels."""
    rows = [("group", "size", "prunable", "MACs/ch", "params/ch", "members")]
    for g in groups:
        prunable = "yes" if g.prunable else f"no: {g.reason}"
        rows.append(
            (
                g.id,
                str(g.size),
                prunable,
                f"{g.macs_per_channel:,}",
                f"{g.params_per_channel:,}",
                members_text(g),
            )
        )
    open_groups = [g for g in groups if g.prunable]
    channels = sum(g.size for g in open_groups)
    return (
        _aligned(rows, right=(1, 3, 4))
        + f"\n{len(groups)} groups, {len(open_groups)} prunable with {channels} channels in all"
    )


def layers_table(before: Sequence[LayerShape], after: Sequence[LayerShape]) -> str:
    """Each layer's channels in and out, MACs and parameters before -> after, then totals."""
    rows = [
        ("layer", "op", "in", "out", "MACs before", "MACs after", "params before", "params after")
    ]
    for old, new in zip(before, after, strict=True):
        (old_macs, old_params), (new_macs, new_params) = old.counts({}), new.counts({})
        rows.append(
            (
                old.path,
                old.op,
                _change(old.in_channels, new.in_channels),
                _change(old.out_channels, new.out_channels),
                f"{old_macs:,}",
                f"{new_macs:,}",
                f"{old_params:,}",
                f"{new_params:,}",
            )
        )
    (macs0, params0), (macs1, params1) = totals(list(before), {}), totals(list(after), {})
    rows.append(("total", "", "", "", f"{macs0:,}", f"{macs1:,}", f"{params0:,}", f"{params1:,}"))
    return (
        _aligned(rows, right=(2, 3, 4, 5, 6, 7))
        + f"\nMACs {macs0:,} -> {macs1:,} ({_fraction(macs0, macs1)} removed), parameters "
        + f"{params0:,} -> {params1:,} ({_fraction(params0, params1)} removed)"
    )


def _change(old: int, new: int) -> str:
    return str(old) if old == new else f"{old}->{new}"


def _fraction(before: int, after: int) -> str:
    return f"{1 - after / before:.1%}" if before else "0.0%"


def _aligned(rows: Sequence[tuple[str, ...]], right: tuple[int, ...]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def codesign_table(
    before: Sequence[LayerShape],
    after: Sequence[LayerShape],
    bits: Mapping[str, tuple[int, int]],
    cycles_before: Mapping[str, int],
    cycles_after: Mapping[str, int],
) -> str:
    """Each latency row of the network before -> after co-design: a conv/linear layer's channels
    in and out and its widths, and every row's cycles (`RunStats.layers`, where layers overlap
    in time), then the totals of the two measured runs."""
    shapes = {old.path: (old, new) for old, new in zip(before, after, strict=True)}
    rows = [("layer", "in", "out", "bits", "cycles before", "cycles after", "saved")]
    for name, old_cycles in cycles_before.items():
        new_cycles = cycles_after.get(name, 0)
        in_text = out_text = width = ""
        if name in shapes and shapes[name][0].op != "batch_norm":
            old, new = shapes[name]
            in_text = _change(old.in_channels, new.in_channels)
            out_text = _change(old.out_channels, new.out_channels)
            w, a = bits.get(name, (8, 8))
            width = f"w{w}a{a}"
        rows.append(
            (
                name,
                in_text,
                out_text,
                width,
                f"{old_cycles:,}",
                f"{new_cycles:,}",
                _fraction(old_cycles, new_cycles),
            )
        )
    return _aligned(rows, right=(1, 2, 4, 5, 6))


def rounds_table(rounds: Sequence[Round], budget_cycles: int) -> str:
    """One line per co-design round: the selector's budget, the prediction and the measurement
    (cycles and as a fraction of the budget)."""
    rows = [("round", "selector budget", "predicted", "measured", "of budget")]
    for r in rounds:
        rows.append(
            (
                str(r.index),
                f"{r.selector_budget_cycles:,.0f}",
                f"{r.predicted_cycles:,}",
                f"{r.measured_cycles:,}",
                f"{r.measured_cycles / budget_cycles:.1%}",
            )
        )
    return _aligned(rows, right=(0, 1, 2, 3, 4))


def report_text(result: CodesignResult) -> str:
    """The rounds, the per-layer table and the outcome, as `dopant codesign` prints them."""
    before = layer_shapes(forward(result.stages["imported"], "to report"))
    after = layer_shapes(forward(result.stages["pruned"], "to report"))
    layers = codesign_table(
        before,
        after,
        result.bits,
        {row.name: row.cycles for row in result.dense_stats.layers},
        {row.name: row.cycles for row in result.stats.layers},
    )
    lines = [
        rounds_table(result.rounds, result.budget_cycles),
        "",
        layers,
        "",
        f"{result.config.name}: {result.dense_cycles:,} -> {result.cycles:,} cycles "
        f"({result.dense_cycles / result.cycles:.2f}x, {result.fps:,.0f} FPS at "
        f"{result.config.clock_mhz:g} MHz); budget {result.budget} = "
        f"{result.budget_cycles:,} cycles; {result.message}",
    ]
    if result.accuracy:
        lines.append("top-1: " + ", ".join(f"{k} {v:.2%}" for k, v in result.accuracy.items()))
    return "\n".join(lines)
