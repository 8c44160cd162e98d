"""The context that parses dopant IR at every stage: builtin, func, qnn and accel."""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin
from xdsl.dialects.func import Func

from dopant.dialects.accel import ACCEL
from dopant.dialects.qnn import QNN


def make_context() -> Context:
    """A fresh context with every dialect dopant IR uses (float and integer `qnn`, `accel`)."""
    ctx = Context()
    for dialect in (Builtin, Func, QNN, ACCEL):
        ctx.load_dialect(dialect)
    return ctx
