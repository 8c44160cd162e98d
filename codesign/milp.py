"""Multiple-choice selection with coupled costs, solved exactly as a mixed-integer program.

Each `Choice` picks one of its options (a group's kept channel count, a layer's weight bits),
each option worth a value; each `Term` is a cost (cycles, bytes) that depends on the options
picked for one to four choices at once: a layer's cycles depend on its input group's channel
count, its output group's count, its weight bits and its activation bits together.
`solve(choices, terms, limits)` maximizes the total value subject to, per limited resource r,
constant[r] + Σ (term costs of r) <= limits[r]. It serves the channel selection (HALP's
latency-saliency knapsack with the coupling kept) and the bit-width selection (HAWQ-V3's
integer program) of the co-design loop (METHODS.md).

Formulation ("linearize", issue 13), solved by HiGHS through `scipy.optimize.milp`:

- a binary x[c, o] per option of each choice, Σ_o x[c, o] = 1;
- a term over one choice is linear in that choice's x; a forbidden option (+inf cost) has its
  x fixed to 0;
- a term over n >= 2 choices gets one continuous y_k in [0, 1] per *allowed* combination k of
  their options (forbidden combinations, +inf, get none), with the marginal constraints
  Σ_{k: k_i = o} y_k = x[c_i, o] for every position i and option o. With x integral each
  marginal is the indicator of the option picked for c_i, so y puts its whole mass on
  combinations that agree with every pick: y is exactly the indicator of the picked
  combination, and the coupled cost Σ_k cost_k y_k is exactly that combination's cost. Picks
  whose combination is forbidden leave y no combination to sit on, so they are infeasible
  without any extra cut. (The marginals imply y_k >= Σ_i x[c_i, k_i] − (n − 1) and Σ y = 1;
  their LP relaxation is tighter, which keeps HiGHS's branch and bound short.)

Exactness: the optimality gap is 0 (`mip_rel_gap`); values are scaled so the largest |value| is
1 and each resource row so its largest |cost| is 1, and HiGHS then decides to its tolerances
(1e-6 absolute on the scaled objective, 1e-7 on the scaled rows): values that differ by less
than a millionth of the largest are ties, and a total may pass its limit by 1e-7 of the row's
largest cost. The picks and totals returned are recomputed from the tables, not read from the
solver. The same problem always gives the same picks (HiGHS is deterministic).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from dopant.support.errors import DopantError, InputError

MAX_TERM_CHOICES = 5  # a layer: input group, output group, weight, input and result widths


@dataclass(frozen=True)
class Choice:
    """One decision: pick one option; `values[o]` is what picking option o is worth."""

    name: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Term:
    """A cost that depends on the options picked for a few choices (e.g. a layer's cycles on its
    input group's count, its output group's count, its weight bits and activation bits).

    `costs[o0, o1, ...]` is the cost when choices[0] picks o0, choices[1] picks o1, ...; its
    shape is (options of choices[0], options of choices[1], ...). +inf forbids a combination
    for every resource, not only for `resource`."""

    choices: tuple[str, ...]
    costs: np.ndarray
    resource: str = "latency"


@dataclass(frozen=True)
class Solution:
    """The option index picked per choice, their total value and each resource's total
    (the constant included), all recomputed from the tables."""

    picks: dict[str, int]
    value: float
    totals: dict[str, float]


class Infeasible(InputError):
    """No picks meet the limits. `minimum[r]` is the least total of each limited resource r any
    picks reach (each minimized on its own, the constant included; +inf when forbidden
    combinations leave no picks at all)."""

    def __init__(self, message: str, minimum: dict[str, float]):
        super().__init__(message)
        self.minimum = minimum


@dataclass
class _Program:
    """The variables and constraints shared by `solve` and `minimum`: x first, then each
    coupled term's y; `costs[r]` the coefficient vector of resource r over all variables."""

    choices: list[Choice]
    offsets: dict[str, int]
    size: int
    upper: np.ndarray
    integral: np.ndarray
    equalities: LinearConstraint
    costs: dict[str, np.ndarray] = field(default_factory=dict)


def solve(
    choices: Sequence[Choice],
    terms: Sequence[Term],
    limits: Mapping[str, float],
    *,
    constant: Mapping[str, float] | None = None,
    time_limit: float | None = None,
) -> Solution:
    """The picks of greatest total value with constant[r] + Σ costs of r <= limits[r] for every
    resource r in `limits` (a resource no term uses is just constant[r] <= limits[r]; a term's
    resource missing from `limits` is unconstrained but totalled). `time_limit` (seconds, none
    by default) bounds HiGHS's search.

    Raises InputError for malformed choices, terms, limits or constants (none at all, a choice
    without options or given twice, a term's unknown choice, wrong shape, NaN or -inf cost),
    `Infeasible` when no picks meet the limits (naming each limit that cannot be met and the
    least total reachable), and InputError when HiGHS stops at `time_limit` before proving
    an optimum."""
    constant = _numbers(constant or {}, "constant", allow_inf=False)
    limits = _numbers(limits, "limit", allow_inf=True)
    program = _program(choices, terms)
    objective = np.zeros(program.size)
    x_values = np.concatenate([np.asarray(c.values, dtype=np.float64) for c in program.choices])
    objective[: len(x_values)] = -x_values / _scale(x_values)
    rows, bounds = [], []
    for resource, limit in limits.items():
        room = limit - constant.get(resource, 0.0)
        row = program.costs.get(resource)
        if math.isinf(room) or row is None:
            if room < 0:
                raise _infeasible(program, limits, constant)
            continue
        rows.append(row / _scale(row))
        bounds.append(room / _scale(row))
    x = _run(program, objective, rows, bounds, time_limit)
    if x is None:
        raise _infeasible(program, limits, constant)
    return _solution(program, terms, x, constant, limits)


def minimum(choices: Sequence[Choice], terms: Sequence[Term], resource: str) -> float:
    """The least total of `resource` over all picks that avoid forbidden combinations, without
    any constant (0.0 when no term uses it, +inf when no picks are allowed at all)."""
    program = _program(choices, terms)
    return _least(program, resource)


def _least(program: _Program, resource: str) -> float:
    row = program.costs.get(resource, np.zeros(program.size))
    x = _run(program, row / _scale(row), [], [], None)
    return math.inf if x is None else float(row @ x)


def _scale(row: np.ndarray) -> float:
    """The largest |entry| (1 for an all-zero row): dividing by it keeps HiGHS's absolute
    tolerances relative to the row."""
    top = float(np.abs(row).max(initial=0.0))
    return top if top > 0 else 1.0


def _run(
    program: _Program,
    objective: np.ndarray,
    rows: list[np.ndarray],
    bounds: list[float],
    time_limit: float | None,
) -> np.ndarray | None:
    """HiGHS's optimal vector, or None when the program is infeasible."""
    constraints = [program.equalities]
    if rows:
        matrix = sp.csr_array(np.vstack(rows))
        constraints.append(LinearConstraint(matrix, -np.inf, np.asarray(bounds)))
    options: dict[str, float | bool] = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    result = milp(
        objective,
        integrality=program.integral,
        bounds=Bounds(np.zeros(program.size), program.upper),
        constraints=constraints,
        options=options,
    )
    if result.status == 0:
        return np.asarray(result.x)
    if result.status == 2:
        return None
    if result.status == 1:
        raise InputError(
            f"the selection solver stopped at its time limit of {time_limit} s before proving "
            "an optimum; raise `time_limit` (or leave it unset) or offer fewer options."
        )
    raise DopantError(f"the selection solver failed ({result.message}); please report it.")


def _program(choices: Sequence[Choice], terms: Sequence[Term]) -> _Program:
    """Check the inputs and lay out the variables and the equality constraints."""
    choices = list(choices)
    offsets, sizes = _check_choices(choices)
    size = sum(sizes.values())
    upper = np.ones(size)
    entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, cols, values)
    row_count = len(choices)
    for i, c in enumerate(choices):  # one-hot: Σ_o x[c, o] = 1
        cols = offsets[c.name] + np.arange(sizes[c.name])
        entries.append((np.full(len(cols), i), cols, np.ones(len(cols))))
    blocks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # resource -> (cols, costs)
    for t, term in enumerate(terms):
        costs = _check_term(term, t, sizes)
        if len(term.choices) == 1:
            cols = offsets[term.choices[0]] + np.arange(costs.size)
            forbidden = np.isinf(costs)
            upper[cols[forbidden]] = 0.0
            blocks.setdefault(term.resource, []).append((cols, np.where(forbidden, 0.0, costs)))
            continue
        combos = np.argwhere(np.isfinite(costs))  # C order: deterministic
        ys = size + np.arange(len(combos))
        size += len(combos)
        blocks.setdefault(term.resource, []).append((ys, costs[np.isfinite(costs)]))
        for position, name in enumerate(term.choices):  # Σ_{k: k_i = o} y_k − x[c_i, o] = 0
            options = sizes[name]
            entries.append((row_count + combos[:, position], ys, np.ones(len(ys))))
            entries.append(
                (
                    row_count + np.arange(options),
                    offsets[name] + np.arange(options),
                    -np.ones(options),
                )
            )
            row_count += options
    upper = np.concatenate([upper, np.ones(size - len(upper))])
    rows, cols, vals = (np.concatenate(parts) for parts in zip(*entries, strict=True))
    matrix = sp.csr_array((vals, (rows, cols)), shape=(row_count, size))
    rhs = np.zeros(row_count)
    rhs[: len(choices)] = 1.0
    integral = np.zeros(size)
    integral[: sum(sizes.values())] = 1
    program = _Program(choices, offsets, size, upper, integral, LinearConstraint(matrix, rhs, rhs))
    for resource, parts in blocks.items():
        row = np.zeros(size)
        for where, values in parts:
            np.add.at(row, where, values)
        program.costs[resource] = row
    return program


def _check_choices(choices: list[Choice]) -> tuple[dict[str, int], dict[str, int]]:
    if not choices:
        raise InputError("the selection has no choices to make; give at least one Choice.")
    offsets: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for c in choices:
        if c.name in sizes:
            raise InputError(f"the choice '{c.name}' is given twice; give each choice once.")
        values = np.asarray(c.values, dtype=np.float64)
        if values.ndim != 1 or len(values) == 0:
            raise InputError(f"the choice '{c.name}' has no options; give it at least one value.")
        if not np.isfinite(values).all():
            raise InputError(
                f"the choice '{c.name}' has a value that is not a finite number ({values}); "
                "forbid an option with a +inf cost in a term instead."
            )
        offsets[c.name] = sum(sizes.values())
        sizes[c.name] = len(values)
    return offsets, sizes


def _check_term(term: Term, index: int, sizes: Mapping[str, int]) -> np.ndarray:
    where = f"term {index} (over {', '.join(term.choices) or 'no choices'}, {term.resource})"
    if not 1 <= len(term.choices) <= MAX_TERM_CHOICES:
        raise InputError(
            f"{where} depends on {len(term.choices)} choices; a term depends on 1 to "
            f"{MAX_TERM_CHOICES}: split it into terms over fewer choices."
        )
    if len(set(term.choices)) != len(term.choices):
        raise InputError(f"{where} names a choice twice; name each choice once.")
    for name in term.choices:
        if name not in sizes:
            raise InputError(
                f"{where} names the choice '{name}', which is not among the choices "
                f"({', '.join(sizes) or 'none'}); add it or fix the name."
            )
    costs = np.asarray(term.costs, dtype=np.float64)
    expected = tuple(sizes[name] for name in term.choices)
    if costs.shape != expected:
        raise InputError(
            f"{where} has costs of shape {costs.shape}, but its choices have {expected} "
            f"options; give an array of shape {expected}."
        )
    if np.isnan(costs).any() or (costs == -np.inf).any():
        raise InputError(
            f"{where} has a NaN or -inf cost; every cost must be a number, or +inf to forbid "
            "that combination."
        )
    return costs


def _numbers(given: Mapping[str, float], what: str, allow_inf: bool) -> dict[str, float]:
    out = {}
    for resource, number in given.items():
        value = float(number)
        if math.isnan(value) or (math.isinf(value) and not (allow_inf and value > 0)):
            raise InputError(
                f"the {what} of '{resource}' is {value}; give a finite number"
                f"{' (or +inf for no limit)' if allow_inf else ''}."
            )
        out[resource] = value
    return out


def _solution(
    program: _Program,
    terms: Sequence[Term],
    x: np.ndarray,
    constant: Mapping[str, float],
    limits: Mapping[str, float],
) -> Solution:
    picks = {
        c.name: int(np.argmax(x[program.offsets[c.name] : program.offsets[c.name] + len(c.values)]))
        for c in program.choices
    }
    value = float(sum(c.values[picks[c.name]] for c in program.choices))
    resources = (*limits, *constant, *(term.resource for term in terms))
    totals = {r: constant.get(r, 0.0) for r in resources}
    for term in terms:
        totals[term.resource] += float(
            np.asarray(term.costs)[tuple(picks[name] for name in term.choices)]
        )
    return Solution(picks, value, totals)


def _infeasible(
    program: _Program, limits: Mapping[str, float], constant: Mapping[str, float]
) -> Infeasible:
    """The error for limits no picks meet, with the least total of each limited resource."""
    if _run(program, np.zeros(program.size), [], [], None) is None:  # any picks allowed?
        return Infeasible(
            "no picks avoid the forbidden (+inf) combinations of the terms: every way to "
            "choose runs into one; allow more combinations (finite costs).",
            {r: math.inf for r in limits},
        )
    least = {r: _least(program, r) + constant.get(r, 0.0) for r in limits}
    missed = [r for r in limits if least[r] > limits[r]]
    if missed:
        parts = [
            f"the {r} limit of {limits[r]:.6g} cannot be met: the least {r} any picks reach is "
            f"{least[r]:.6g}"
            + (f" (a constant {constant[r]:.6g} included)" if r in constant else "")
            for r in missed
        ]
        return Infeasible(
            "; ".join(parts) + "; raise the limit to at least that, or allow smaller options.",
            least,
        )
    reach = ", ".join(f"{r} {least[r]:.6g} (limit {limits[r]:.6g})" for r in limits)
    return Infeasible(
        f"the limits on {', '.join(limits)} cannot all be met at once, although each alone can "
        f"(the least reachable: {reach}); raise one of them, or allow smaller options.",
        least,
    )
