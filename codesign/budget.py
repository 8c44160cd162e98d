"""Latency budgets as a user writes them: `40000cycles`, `80us`, `1.5ms`, `2000fps`, `0.5x`.

A budget is per image. Cycles are the machine's own unit; microseconds, milliseconds and frames
per second convert at the target's clock (`AccelConfig.clock_mhz`); `0.5x` is a fraction of the
dense W8A8 network's measured cycles on the target, so it needs that measurement.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from dopant.backend.target import AccelConfig
from dopant.support.errors import InputError

UNITS = ("cycles", "us", "ms", "fps", "x")
_TEXT = re.compile(r"\s*(?P<value>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[a-z]+)\s*")
_FORMS = "40000cycles, 80us, 1.5ms, 2000fps or 0.5x"


@dataclass(frozen=True)
class LatencyBudget:
    """A latency limit per image: `value` in `unit` (one of UNITS)."""

    value: float
    unit: str

    @staticmethod
    def parse(budget: str | int | LatencyBudget) -> LatencyBudget:
        """The budget `budget` spells; an int is cycles. InputError for anything else, naming
        the text and the forms that are understood."""
        if isinstance(budget, LatencyBudget):
            return budget
        if isinstance(budget, bool) or not isinstance(budget, int | str):
            raise InputError(
                f"the latency budget {budget!r} is neither a number of cycles nor text such as "
                f"{_FORMS}."
            )
        if isinstance(budget, int):
            return LatencyBudget.checked(float(budget), "cycles")
        match = _TEXT.fullmatch(budget.lower())
        if match is None or match["unit"] not in UNITS:
            raise InputError(
                f"the latency budget '{budget}' is not understood; write it as {_FORMS}."
            )
        return LatencyBudget.checked(float(match["value"]), match["unit"])

    @staticmethod
    def checked(value: float, unit: str) -> LatencyBudget:
        if unit not in UNITS:
            raise InputError(f"latency budget unit '{unit}' is unknown; use {', '.join(UNITS)}.")
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"the latency budget must be positive, got {value:g}{unit}.")
        if unit == "x" and value > 1:
            raise InputError(
                f"the latency budget {value:g}x is above the dense network's latency (1x), "
                "which needs no compression; give a fraction such as 0.5x."
            )
        return LatencyBudget(value, unit)

    def cycles(self, config: AccelConfig, dense_cycles: int | None = None) -> int:
        """The budget in cycles on `config` (whole cycles, rounded down: the limit is kept).
        `dense_cycles`, the dense W8A8 network's measured cycles, is needed for a fraction."""
        if self.unit == "cycles":
            return math.floor(self.value)
        if self.unit == "x":
            if dense_cycles is None:
                raise InputError(
                    f"the budget {self} is a fraction of the dense latency, which is not known "
                    "here; give it in cycles, us, ms or fps."
                )
            return math.floor(self.value * dense_cycles)
        # cycles per microsecond = clock_mhz: multiply before dividing, so that 80us at 500 MHz
        # is 40000 cycles and not 39999.99...
        if self.unit == "fps":
            return math.floor(config.clock_mhz * 1e6 / self.value)
        microseconds = self.value * (1000 if self.unit == "ms" else 1)
        return math.floor(microseconds * config.clock_mhz)

    def __str__(self) -> str:
        return f"{self.value:g}{self.unit}"
