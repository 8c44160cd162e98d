"""dopant's dialects and passes for the stock `xdsl-opt`, found through the `xdsl.universe`
entry point in pyproject.toml. Nothing is imported until `xdsl-opt` asks for it."""

from __future__ import annotations

from xdsl.ir import Dialect
from xdsl.universe import Universe

from dopant.compiler.pipeline import available_passes


def _qnn() -> Dialect:
    from dopant.dialects.qnn import QNN

    return QNN


def _accel() -> Dialect:
    from dopant.dialects.accel import ACCEL

    return ACCEL


# xdsl-opt already has cse and dce; offering them twice would clash.
DOPANT_UNIVERSE = Universe(
    all_dialects={"qnn": _qnn, "accel": _accel},
    all_passes={
        name: factory for name, factory in available_passes().items() if name not in ("cse", "dce")
    },
)
