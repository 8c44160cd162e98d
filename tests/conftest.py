"""Test-wide settings: one BLAS thread, so numpy's timings do not collapse when the two cores of
a shared machine are busy (two BLAS threads fighting another process ran 100x slower here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(limits=1, user_api="blas"):
        yield
