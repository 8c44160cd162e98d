"""The coupled multiple-choice solver (`codesign.milp`) against brute force.

`brute_force` tries every pick (itertools.product) and is the reference: `solve` must reach its
optimum value, keep the limits, and on infeasible limits raise `Infeasible` with the least total
each limited resource reaches.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from dopant.codesign.milp import Choice, Infeasible, Solution, Term, minimum, solve
from dopant.support.errors import InputError


def totals_of(
    picks: Mapping[str, int], terms: Sequence[Term], constant: Mapping[str, float]
) -> dict[str, float] | None:
    """Each resource's total for `picks` (constant included), or None if a cost is +inf."""
    totals: dict[str, float] = dict(constant)
    for term in terms:
        cost = float(term.costs[tuple(picks[name] for name in term.choices)])
        if math.isinf(cost):
            return None
        totals[term.resource] = totals.get(term.resource, 0.0) + cost
    return totals


def brute_force(
    choices: Sequence[Choice],
    terms: Sequence[Term],
    limits: Mapping[str, float],
    constant: Mapping[str, float],
) -> tuple[float | None, dict[str, float]]:
    """(the best value over picks within the limits or None, the least total per limited
    resource over all allowed picks, constant included)."""
    best: float | None = None
    least = {r: math.inf for r in limits}
    for combo in itertools.product(*(range(len(c.values)) for c in choices)):
        picks = {c.name: o for c, o in zip(choices, combo, strict=True)}
        totals = totals_of(picks, terms, constant)
        if totals is None:
            continue
        for r in limits:
            least[r] = min(least[r], totals.get(r, 0.0))
        if all(totals.get(r, 0.0) <= limit for r, limit in limits.items()):
            value = sum(c.values[o] for c, o in zip(choices, combo, strict=True))
            best = value if best is None else max(best, value)
    return best, least


def random_instance(
    rng: np.random.Generator,
) -> tuple[list[Choice], list[Term], dict[str, float], dict[str, float]]:
    """2-5 choices of 1-4 options, terms over 1-3 choices on 1-2 resources, ~5% of the
    combinations forbidden, limits anywhere from below the least to above the most."""
    choices = [
        Choice(f"c{i}", tuple(rng.normal(size=rng.integers(1, 5)).round(3)))
        for i in range(rng.integers(2, 6))
    ]
    resources = ["latency", "size"][: rng.integers(1, 3)]
    terms = []
    for _ in range(rng.integers(1, 7)):
        over = rng.choice(len(choices), size=min(len(choices), rng.integers(1, 4)), replace=False)
        shape = tuple(len(choices[i].values) for i in over)
        costs = rng.uniform(0, 10, size=shape).round(2)
        costs[rng.random(size=shape) < 0.05] = np.inf
        terms.append(Term(tuple(choices[i].name for i in over), costs, str(rng.choice(resources))))
    constant = {"latency": float(rng.uniform(0, 3))} if rng.random() < 0.3 else {}
    limits = {r: float(rng.uniform(0, 6 * len(terms))) for r in resources}
    return choices, terms, limits, constant


def check_feasible(solution: Solution, choices, terms, limits, constant) -> None:
    totals = totals_of(solution.picks, terms, constant)
    assert totals is not None, "the picks use a forbidden combination"
    for r, limit in limits.items():
        assert totals.get(r, 0.0) <= limit + 1e-6
        assert solution.totals.get(r, 0.0) == pytest.approx(totals.get(r, 0.0))
    assert solution.value == pytest.approx(sum(c.values[solution.picks[c.name]] for c in choices))


def test_random_instances_match_brute_force() -> None:
    rng = np.random.default_rng(13)
    outcomes = {"solved": 0, "infeasible": 0}
    for _ in range(300):
        choices, terms, limits, constant = random_instance(rng)
        best, least = brute_force(choices, terms, limits, constant)
        if best is None:
            with pytest.raises(Infeasible) as caught:
                solve(choices, terms, limits, constant=constant)
            assert caught.value.minimum == pytest.approx(least)
            outcomes["infeasible"] += 1
            continue
        solution = solve(choices, terms, limits, constant=constant)
        check_feasible(solution, choices, terms, limits, constant)
        assert solution.value == pytest.approx(best, abs=1e-6)
        outcomes["solved"] += 1
    assert min(outcomes.values()) >= 30, outcomes  # both kinds are well exercised


def test_minimum_is_the_least_total() -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        choices, terms, _, _ = random_instance(rng)
        _, least = brute_force(choices, terms, {"latency": math.inf}, {})
        assert minimum(choices, terms, "latency") == pytest.approx(least["latency"])


def test_coupled_cost_is_exact() -> None:
    # 'a' and 'b' are worth most at their last options, but that pair costs 10 together although
    # each alone is cheap: a separable model of the cost would pick both.
    choices = [Choice("a", (0.0, 1.0)), Choice("b", (0.0, 1.0))]
    terms = [Term(("a", "b"), np.array([[1.0, 2.0], [2.0, 10.0]]))]
    solution = solve(choices, terms, {"latency": 3.0})
    assert solution.value == 1.0 and solution.totals == {"latency": 2.0}
    assert solve(choices, terms, {"latency": 10.0}).picks == {"a": 1, "b": 1}


def test_forbidden_combinations_are_never_picked() -> None:
    choices = [Choice("a", (0.0, 5.0)), Choice("b", (0.0, 5.0)), Choice("c", (0.0, 1.0))]
    terms = [
        Term(("a", "b", "c"), np.ones((2, 2, 2))),
        Term(("a", "b"), np.array([[1.0, 1.0], [1.0, np.inf]])),
        Term(("c",), np.array([0.0, np.inf]), "size"),
    ]
    solution = solve(choices, terms, {"latency": 100.0})
    assert solution.picks["c"] == 0 and (solution.picks["a"], solution.picks["b"]) != (1, 1)
    assert solution.value == 5.0


def test_nothing_allowed_is_infeasible() -> None:
    choices = [Choice("a", (0.0, 1.0))]
    with pytest.raises(Infeasible, match="forbidden") as caught:
        solve(choices, [Term(("a",), np.array([np.inf, np.inf]))], {"latency": 5.0})
    assert caught.value.minimum == {"latency": math.inf}


def test_infeasible_names_the_limit_and_its_minimum() -> None:
    choices = [Choice("a", (0.0, 1.0))]
    terms = [Term(("a",), np.array([4.0, 8.0])), Term(("a",), np.array([3.0, 1.0]), "size")]
    with pytest.raises(Infeasible, match=r"latency limit of 3 .* least latency .* is 5") as caught:
        solve(choices, terms, {"latency": 3.0, "size": 10.0}, constant={"latency": 1.0})
    assert caught.value.minimum == {"latency": 5.0, "size": 1.0}
    # each limit alone can be met, both together cannot
    with pytest.raises(Infeasible, match="cannot all be met at once"):
        solve(choices, terms, {"latency": 5.0, "size": 2.0})
    # a limit no term uses still counts its constant
    with pytest.raises(Infeasible, match="least bytes any picks reach is 7"):
        solve(choices, terms, {"bytes": 6.0}, constant={"bytes": 7.0})


def test_unused_resources_and_ties() -> None:
    choices = [Choice("a", (1.0, 1.0, 1.0)), Choice("b", (2.0, 2.0))]
    terms = [Term(("a", "b"), np.arange(6.0).reshape(3, 2))]
    first = solve(choices, terms, {"latency": 10.0, "energy": 1.0})
    assert first.value == 3.0 and first.totals["energy"] == 0.0
    assert all(solve(choices, terms, {"latency": 10.0, "energy": 1.0}) == first for _ in range(3))


@pytest.mark.parametrize(
    ("choices", "terms", "limits", "message"),
    [
        ([], [], {}, "no choices to make"),
        ([Choice("a", ())], [], {}, "'a' has no options"),
        ([Choice("a", (1.0,)), Choice("a", (2.0,))], [], {}, "given twice"),
        ([Choice("a", (float("nan"),))], [], {}, "not a finite number"),
        ([Choice("a", (1.0,))], [Term(("b",), np.zeros(1))], {}, "'b', which is not among"),
        ([Choice("a", (1.0, 2.0))], [Term(("a",), np.zeros(3))], {}, r"shape \(3,\).*\(2,\)"),
        ([Choice("a", (1.0,))], [Term(("a",), np.array([np.nan]))], {}, "NaN or -inf"),
        ([Choice("a", (1.0,))], [Term(("a", "a"), np.zeros((1, 1)))], {}, "a choice twice"),
        ([Choice("a", (1.0,))], [Term((), np.zeros(()))], {}, "depends on 0 choices"),
        ([Choice("a", (1.0,))], [], {"latency": float("nan")}, "limit of 'latency' is nan"),
    ],
)
def test_bad_input(choices, terms, limits, message) -> None:
    with pytest.raises(InputError, match=message):
        solve(choices, terms, limits)


def realistic(rng: np.random.Generator) -> tuple[list[Choice], list[Term], float]:
    """10 channel groups (4 kept widths each) and 20 bit choices (8, 4, 2), 60 layers each
    costing cycles over (input group, output group, weight bits, activation bits): 8640 y."""
    groups = [Choice(f"g{i}", tuple(np.cumsum(rng.uniform(1, 5, 4)).round(3))) for i in range(10)]
    bits = [Choice(f"b{i}", tuple(-np.array([0, 1, 8]) * rng.uniform(0.5, 2))) for i in range(20)]
    widths = np.array([16, 32, 48, 64])
    speed = np.array([1.0, 0.5, 0.25])  # cycles scale with the bits (fusion)
    terms = []
    for _ in range(60):
        gin, gout = rng.choice(10, 2, replace=False)
        wb, ab = rng.choice(20, 2, replace=False)
        pixels = rng.choice([64, 256, 1024])
        folds = np.ceil(widths / 16)
        cycles = (
            pixels
            * folds[:, None, None, None]
            * folds[None, :, None, None]
            * np.sqrt(speed[None, None, :, None] * speed[None, None, None, :])
        )
        terms.append(Term((f"g{gin}", f"g{gout}", f"b{wb}", f"b{ab}"), cycles.round()))
    choices = groups + bits
    low, high = minimum(choices, terms, "latency"), sum(float(t.costs.max()) for t in terms)
    return choices, terms, low + 0.4 * (high - low)


def greedy(choices: Sequence[Choice], terms: Sequence[Term], limit: float) -> float:
    """Start from every choice's last option and move the choice that loses least value per
    cycle saved one option down until the total fits: a baseline, not an optimum."""
    picks = {c.name: int(np.argmax(c.values)) for c in choices}
    total = totals_of(picks, terms, {})
    assert total is not None
    while total["latency"] > limit:
        best = None
        for c in choices:
            for o in range(len(c.values)):
                if o == picks[c.name]:
                    continue
                trial = totals_of({**picks, c.name: o}, terms, {})
                assert trial is not None
                saved = total["latency"] - trial["latency"]
                lost = c.values[picks[c.name]] - c.values[o]
                if saved > 0 and (best is None or lost / saved < best[0]):
                    best = (lost / saved, c.name, o, trial)
        assert best is not None
        picks[best[1]] = best[2]
        total = best[3]
    return sum(c.values[picks[c.name]] for c in choices)


def test_realistic_size_beats_greedy() -> None:
    choices, terms, limit = realistic(np.random.default_rng(0))
    start = time.perf_counter()
    solution = solve(choices, terms, {"latency": limit})
    print(f"\n30 choices, 60 terms of 4x4x3x3: solved in {time.perf_counter() - start:.2f} s")
    check_feasible(solution, choices, terms, {"latency": limit}, {})
    assert solution.value >= greedy(choices, terms, limit) - 1e-9


def test_time_limit_is_an_error() -> None:
    choices, terms, limit = realistic(np.random.default_rng(1))
    with pytest.raises(InputError, match=r"time limit of 0\.01 s"):
        solve(choices, terms, {"latency": limit}, time_limit=0.01)
