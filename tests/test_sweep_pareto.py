"""Pareto fronts of a sweep table (codesign._sweep.pareto) against a brute-force definition."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dopant.codesign._sweep.pareto import ALL, fronts, higher_is_better, pareto_front
from dopant.support.errors import InputError

Row = dict[str, Any]


def brute_front(rows: list[Row], x: str, y: str, maximize: tuple[bool, bool]) -> list[Row]:
    """The definition, O(n^2): ok rows with both values that no such row dominates."""
    sx, sy = (1 if up else -1 for up in maximize)
    pool = [r for r in rows if r["status"] == "ok" and r[x] is not None and r[y] is not None]

    def dominates(a: Row, b: Row) -> bool:
        ge = sx * a[x] >= sx * b[x] and sy * a[y] >= sy * b[y]
        return ge and (sx * a[x] > sx * b[x] or sy * a[y] > sy * b[y])

    return [b for b in pool if not any(dominates(a, b) for a in pool)]


def ids(rows: list[Row]) -> list[str]:
    return [r["point"] for r in rows]


def row(point: str, fps: float | None, acc: float | None, **more: Any) -> Row:
    return {"point": point, "status": "ok", "fps": fps, "accuracy_integer": acc, **more}


# Small integer grids force ties on x, on y and exact duplicates; None and failures ride along.
values = st.one_of(st.none(), st.integers(0, 5).map(float))
rows_strategy = st.lists(
    st.tuples(values, values, values, st.booleans(), st.sampled_from(["a", "b", "c"])),
    max_size=30,
).map(
    lambda cells: [
        {
            "point": f"p{i:02d}",
            "status": "ok" if ok else "error",
            "fps": fps,
            "accuracy_integer": acc,
            "energy_uj": energy,
            "target": target,
        }
        for i, (fps, acc, energy, ok, target) in enumerate(cells)
    ]
)
directions = st.tuples(st.booleans(), st.booleans())


@settings(max_examples=300)
@given(rows_strategy, directions)
def test_front_is_the_brute_force_front(rows: list[Row], maximize: tuple[bool, bool]) -> None:
    got = pareto_front(rows, "fps", "accuracy_integer", maximize)
    want = brute_front(rows, "fps", "accuracy_integer", maximize)
    assert sorted(ids(got)) == sorted(ids(want))
    assert [r["fps"] for r in got] == sorted(r["fps"] for r in got)


@settings(max_examples=150)
@given(rows_strategy, directions)
def test_fronts_per_group_and_all(rows: list[Row], maximize: tuple[bool, bool]) -> None:
    got = fronts(rows, "energy_uj", "accuracy_integer", by="target", maximize=maximize)
    want_all = brute_front(rows, "energy_uj", "accuracy_integer", maximize)
    assert sorted(ids(got[ALL])) == sorted(ids(want_all))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    assert list(got) == [ALL, *targets]
    for target in targets:
        members = [r for r in rows if r["target"] == target]
        want = brute_front(members, "energy_uj", "accuracy_integer", maximize)
        assert sorted(ids(got[target])) == sorted(ids(want))


@pytest.mark.parametrize("seed", range(20))
def test_random_real_valued_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    rows = [row(f"p{i}", float(f), float(a)) for i, (f, a) in enumerate(rng.random((n, 2)))]
    for maximize in [(True, True), (False, True), (True, False), (False, False)]:
        want = brute_front(rows, "fps", "accuracy_integer", maximize)
        assert sorted(ids(pareto_front(rows, maximize=maximize))) == sorted(ids(want))


def test_a_worked_example() -> None:
    rows = [
        row("slow-good", 10.0, 0.90),
        row("fast-bad", 100.0, 0.50),
        row("middle", 50.0, 0.80),
        row("dominated", 40.0, 0.70),
        row("tie-x-worse-y", 50.0, 0.75),
        {**row("failed", None, None), "status": "error"},
        {**row("failed-but-valued", 1000.0, 1.0), "status": "error"},
        row("no-accuracy", 2000.0, None),
    ]
    assert ids(pareto_front(rows)) == ["slow-good", "middle", "fast-bad"]
    # minimizing fps instead: the slowest point wins on x, nothing beats its accuracy
    assert ids(pareto_front(rows, maximize=(False, True))) == ["slow-good"]


def test_exact_duplicates_are_all_kept_and_ties_dominate() -> None:
    rows = [row("a", 5.0, 0.5), row("b", 5.0, 0.5), row("c", 5.0, 0.4), row("d", 4.0, 0.5)]
    # a and b tie exactly: both stay; c (same x, lower y) and d (same y, lower x) are dominated
    assert ids(pareto_front(rows)) == ["a", "b"]


def test_cost_columns_are_minimized_by_default() -> None:
    rows = [
        {**row("cheap", 1.0, 0.6), "energy_uj": 10.0, "area_mm2": 2.0},
        {**row("costly", 1.0, 0.9), "energy_uj": 30.0, "area_mm2": 1.0},
        {**row("wasteful", 1.0, 0.5), "energy_uj": 40.0, "area_mm2": 3.0},
    ]
    assert not higher_is_better("energy_uj") and higher_is_better("fps")
    assert ids(pareto_front(rows, x="energy_uj")) == ["cheap", "costly"]
    assert ids(pareto_front(rows, x="area_mm2")) == ["costly"]
    # an explicit direction overrides the column's: maximizing energy keeps the wasteful point
    assert ids(pareto_front(rows, x="energy_uj", maximize=(True, True))) == ["costly", "wasteful"]


def test_empty_and_all_failed_tables() -> None:
    assert pareto_front([]) == []
    failed = [{**row("x", 1.0, 1.0), "status": "error", "target": "t"}]
    assert fronts(failed) == {ALL: [], "t": []}


def test_rows_without_a_group_count_only_overall() -> None:
    rows = [{**row("a", 2.0, 0.9), "target": None}, {**row("b", 1.0, 0.5), "target": "edge"}]
    got = fronts(rows)
    assert ids(got[ALL]) == ["a"]
    assert list(got) == [ALL, "edge"] and ids(got["edge"]) == ["b"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pareto_front([], x="speed"), "x='speed' is not a numeric column"),
        (lambda: pareto_front([], y="label"), "y='label' is not a numeric column"),
        (lambda: fronts([], by="hardware"), "by='hardware' is not a column"),
        (lambda: fronts([{**row("a", 1.0, 1.0), "target": "all"}]), "a target is named 'all'"),
    ],
)
def test_bad_arguments_are_input_errors(call: Any, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        call()
    assert "choose" in str(info.value) or "rename" in str(info.value)
