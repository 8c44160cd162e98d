"""Latency budgets as text: each unit against a hand conversion at the preset's clock."""

import pytest

from dopant.backend.presets import load_target
from dopant.codesign.budget import LatencyBudget
from dopant.support.errors import InputError

EDGE16 = load_target("edge16")  # 500 MHz


@pytest.mark.parametrize(
    ("text", "dense", "cycles"),
    [
        ("40000cycles", None, 40000),
        ("40000 cycles", None, 40000),
        (40000, None, 40000),
        ("80us", None, 40000),  # 80e-6 s * 500e6 Hz
        ("0.08ms", None, 40000),
        ("2000fps", None, 250000),  # 1/2000 s * 500e6 Hz
        ("12500FPS", None, 40000),
        ("0.5x", 48638, 24319),  # half the dense cycles
        ("0.3x", 10001, 3000),  # rounded down: the limit is kept
    ],
)
def test_budget_units_convert_at_the_clock(text: object, dense: int | None, cycles: int) -> None:
    assert LatencyBudget.parse(text).cycles(EDGE16, dense) == cycles  # type: ignore[arg-type]


def test_budget_prints_as_written() -> None:
    assert str(LatencyBudget.parse("0.5x")) == "0.5x"
    assert str(LatencyBudget.parse("80us")) == "80us"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fast", "'fast' is not understood; write it as 40000cycles"),
        ("40000", "'40000' is not understood"),
        ("3hz", "'3hz' is not understood"),
        ("0x", "must be positive, got 0x"),
        ("1.5x", "1.5x is above the dense network's latency"),
        (2.5, "neither a number of cycles nor text"),
        (True, "neither a number of cycles nor text"),
        (-5, "must be positive, got -5cycles"),
    ],
)
def test_bad_budgets_are_named(text: object, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        LatencyBudget.parse(text)  # type: ignore[arg-type]


def test_a_fraction_needs_the_dense_latency() -> None:
    with pytest.raises(InputError, match="fraction of the dense latency, which is not known"):
        LatencyBudget.parse("0.5x").cycles(EDGE16)
