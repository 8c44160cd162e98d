"""Pareto fronts of a sweep's table: the points no other point beats on two objectives.

A row dominates another when it is at least as good on both objectives and strictly better on
one; the front is the rows nothing dominates. Rows that are equal on both objectives do not
dominate each other, so exact duplicates on the front are all kept (dropping one would be an
arbitrary choice between two points the table cannot tell apart). Failed rows and rows without
a value (None or NaN) on either objective are left out.

Which direction is better comes from the column: `LOWER_IS_BETTER` lists the costs (cycles,
energy, area, traffic, sizes, time); every other numeric column is maximized.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from dopant.codesign._sweep.columns import KINDS, NAMES
from dopant.support.errors import InputError

Row = dict[str, Any]

# the costs: a point is better with less of them
LOWER_IS_BETTER = frozenset(
    {
        "cycles",
        "energy_uj",
        "area_mm2",
        "dram_bytes",
        "model_bytes",
        "macs",
        "compile_s",
        "simulate_s",
    }
)

# the key of `fronts`' overall front, beside one key per group
ALL = "all"


def objective_columns() -> list[str]:
    """The columns a front can be taken on: the numeric ones, in the table's order."""
    return [name for name in NAMES if KINDS[name] in (int, float)]


def higher_is_better(column: str) -> bool:
    """Whether a larger value of `column` is better (False for the costs)."""
    return column not in LOWER_IS_BETTER


def check_column(column: str, argument: str) -> None:
    """InputError unless `column` is a numeric column of the table; `argument` names the
    parameter it was given as."""
    choices = objective_columns()
    if column not in choices:
        raise InputError(
            f"{argument}={column!r} is not a numeric column of the sweep table; "
            f"choose one of {', '.join(choices)}."
        )


def directions(x: str, y: str, maximize: tuple[bool, bool] | None) -> tuple[bool, bool]:
    """The (x, y) directions: `maximize` when given, else each column's default."""
    if maximize is None:
        return higher_is_better(x), higher_is_better(y)
    return maximize


def usable(rows: Iterable[Row], x: str, y: str) -> list[Row]:
    """The ok rows with a value on both `x` and `y`, in their order."""
    return [row for row in rows if row.get("status") == "ok" and _value(row, x) and _value(row, y)]


def _value(row: Row, column: str) -> bool:
    """Whether `row` has a number in `column` (not None, not NaN)."""
    value = row.get(column)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def pareto_front(
    rows: Iterable[Row],
    x: str = "fps",
    y: str = "accuracy_integer",
    maximize: tuple[bool, bool] | None = None,
) -> list[Row]:
    """The non-dominated ok rows on (`x`, `y`), sorted by `x` ascending (ties keep the input
    order). `maximize` says, per objective, whether larger is better; None takes each column's
    default (`higher_is_better`). Duplicates on both objectives are all kept."""
    check_column(x, "x")
    check_column(y, "y")
    sign_x, sign_y = (1.0 if up else -1.0 for up in directions(x, y, maximize))
    candidates = usable(rows, x, y)
    # In the maximize-both space: walk x from best to worst; a group of equal x survives with
    # its best y only if that y beats every y seen at a strictly better x.
    order = sorted(range(len(candidates)), key=lambda i: -sign_x * candidates[i][x])
    kept: list[int] = []
    best_y = -math.inf
    start = 0
    while start < len(order):
        end = start
        level = candidates[order[start]][x]
        while end < len(order) and candidates[order[end]][x] == level:
            end += 1
        group = order[start:end]
        top = max(sign_y * candidates[i][y] for i in group)
        if top > best_y:
            kept.extend(i for i in group if sign_y * candidates[i][y] == top)
            best_y = top
        start = end
    return [candidates[i] for i in sorted(kept, key=lambda i: (candidates[i][x], i))]


def fronts(
    rows: Iterable[Row],
    x: str = "fps",
    y: str = "accuracy_integer",
    by: str = "target",
    maximize: tuple[bool, bool] | None = None,
) -> dict[str, list[Row]]:
    """The front of each group of rows sharing a value of `by` (e.g. one hardware config), and
    the front of all rows under the key `ALL` ("all"), first; groups follow in the order they
    first appear (a group none of whose rows is ok has an empty front). Rows whose `by` is None
    count only in the overall front. A group named "all" is an InputError: it would hide the
    overall front."""
    if by not in NAMES:
        raise InputError(f"by={by!r} is not a column of the sweep table; choose one of {NAMES}.")
    table = list(rows)
    groups: dict[str, list[Row]] = {}
    for row in table:
        if row.get(by) is not None:
            groups.setdefault(str(row[by]), []).append(row)
    if ALL in groups:
        raise InputError(
            f"a {by} is named {ALL!r}, the key of the overall front; group by another column "
            "or rename it."
        )
    result = {ALL: pareto_front(table, x, y, maximize)}
    for name, members in groups.items():
        result[name] = pareto_front(members, x, y, maximize)
    return result
