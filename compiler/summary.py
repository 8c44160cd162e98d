"""Per-op summaries of `qnn` IR: what each op is, its output shape, weights and MACs."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from xdsl.dialects.builtin import ModuleOp

from dopant.dialects.qnn import ConstantOp, Conv2DOp, LinearOp, QnnOp
from dopant.dialects.qnn.base import shape


@dataclass(frozen=True)
class OpRow:
    """One computing op: its module path, op name, output shape, weight count and MACs."""

    path: str
    op: str
    out_shape: tuple[int, ...]
    weights: int
    macs: int
    act: str = ""


def macs(op: QnnOp) -> int:
    """Multiply-accumulates of a conv or linear layer (0 for other ops).

    conv: N·Ho·Wo·Cout · (Cin/groups)·kh·kw; linear: N·out·in (METHODS.md, GEMM view).
    """
    if isinstance(op, Conv2DOp | LinearOp):
        out = shape(op.output)
        per_output = math.prod(shape(op.weight)[1:])
        return math.prod(out) * per_output
    return 0


def op_rows(module: ModuleOp) -> list[OpRow]:
    rows = []
    for op in module.walk():
        if not isinstance(op, QnnOp):
            continue
        weights = sum(math.prod(shape(v)) for v in op.operands if isinstance(v.owner, ConstantOp))
        act = getattr(op, "act", None)
        fused = str(act).removeprefix("#qnn.act<").removesuffix(">") if act is not None else ""
        rows.append(OpRow(op.path.data, op.name, shape(op.results[0]), weights, macs(op), fused))
    return rows


def op_counts(module: ModuleOp) -> Counter[str]:
    return Counter(op.name for op in module.walk() if op.name.startswith("qnn."))


def format_table(rows: list[OpRow]) -> str:
    """A fixed-width table with totals, one line per op."""
    header = f"{'path':<26} {'op':<20} {'act':<14} {'output':<14} {'weights':>10} {'MACs':>13}"
    lines = [header, "-" * len(header)]
    for r in rows:
        dims = "x".join(map(str, r.out_shape))
        lines.append(
            f"{r.path:<26} {r.op:<20} {r.act:<14} {dims:<14} {r.weights:>10,} {r.macs:>13,}"
        )
    lines.append("-" * len(header))
    total_w, total_m = sum(r.weights for r in rows), sum(r.macs for r in rows)
    lines.append(
        f"{'total':<26} {f'{len(rows)} ops':<20} {'':<14} {'':<14} {total_w:>10,} {total_m:>13,}"
    )
    return "\n".join(lines)
